"""PolicyManager: the agent's iptables chains and ipsets that isolate workloads.

``on_changes`` hands the store's changes to ``policy.host.HostPolicy`` (pure) and collects
what became dirty; ``apply`` writes it in one batch per family and phase:

1. ipsets: create sets and add/remove members (rules about to be written need them);
2. iptables: one ``iptables-restore --noflush`` commit per IP family;
3. ipsets: destroy the sets no rule refers to any more.

On the agent's first apply, before any route, ``guard`` makes sure the skeleton of the chains
exists (``HostPolicy.skeleton``: the hooks, and dispatch chains that drop everything), so
that a workload whose route goes in before its own chains has its traffic dropped, not let
through, until they are written later in the same batch.

A failure leaves the dirty work pending and makes the next apply read the kernel back and
reconcile in full.  So does a ``DataplaneRefresh`` (``on_message``), which puts our hooks
back on top if something else inserted rules above them.  Strict rp_filter on workload
interfaces is set by the InterfaceManager.
"""

from __future__ import annotations

import logging
import subprocess
import time

from felix_py.calc.store import Changes, Store
from felix_py.datastore.keys import EndpointId
from felix_py.dataplane.ipsets import Ipsets
from felix_py.dataplane.manager import DataplaneRefresh
from felix_py.dataplane.iptables import TOOLS, IptablesTable, host_backend
from policy.host import HostPolicy, Settings

log = logging.getLogger(__name__)

PROGRAMMED_BACKEND = "legacy"


def available_families(run=subprocess.run) -> tuple[int, ...]:
    """IPv4 always; IPv6 when ip6tables can read the filter table here."""
    try:
        ok = run([TOOLS[6][0], "-t", "filter"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        log.warning("ip6tables (legacy) is not usable here: IPv6 traffic of workloads is "
                    "not policed by felix-py")
    return (4, 6) if ok else (4,)


class PolicyManager:
    name = "policy"

    def __init__(self, config, hostname: str, *, tables: dict | None = None,
                 ipsets: Ipsets | None = None, families: tuple[int, ...] | None = None,
                 check_backend: bool = True, config_source=None):
        # The agent replaces its Config on reload; config_source reads the current one.
        self._config_source = config_source or (lambda: config)
        families = families or (tuple(tables) if tables else available_families())
        self.settings = Settings.from_config(config, families)
        self.hostname = hostname
        self.calc = HostPolicy(hostname, self.settings)
        self.tables = tables or {f: IptablesTable(f) for f in families}
        self.ipsets = ipsets or Ipsets()
        self._dirty_chains: dict[int, set[str]] = {f: set() for f in families}
        self._dirty_sets: set[str] = set()
        self._stats = {"applies": 0, "last_apply_secs": 0.0, "last_batch_lines": 0}
        if check_backend:
            _report_backend()
        self.guard = PolicyGuard(self)

    @classmethod
    def from_ctx(cls, ctx) -> "PolicyManager":
        return cls(ctx.config, ctx.hostname, config_source=lambda: ctx.config)

    # -- Manager protocol -----------------------------------------------------------------
    def on_changes(self, store: Store, changes: Changes, links) -> None:
        if changes.config:
            settings = Settings.from_config(self._config_source(), self.settings.families)
            if settings != self.settings:
                log.info("policy settings changed; rebuilding every chain")
                self._rebuild(store, settings)
        self.calc.update(store, changes)
        self._collect()

    def apply(self) -> None:
        t0 = time.monotonic()
        self.ipsets.update(self.calc.sets, self._dirty_sets)
        self._dirty_sets = set()
        lines = 0
        for family, table in self.tables.items():
            table.apply(self.calc.chains[family], self._dirty_chains[family])
            self._dirty_chains[family] = set()
            lines += table.last_batch_lines
        self.ipsets.remove_stale(self.calc.sets)
        self._stats["applies"] += 1
        self._stats["last_apply_secs"] = round(time.monotonic() - t0, 4)
        self._stats["last_batch_lines"] = lines

    def endpoint_problems(self) -> dict[EndpointId, tuple[str, str]]:
        return dict(self.calc.endpoint_problems)

    def on_message(self, msg) -> None:
        if isinstance(msg, DataplaneRefresh):
            for table in self.tables.values():
                table.refresh()
            self.ipsets.refresh()

    def status(self) -> dict:
        return {**self._stats,
                "chains": sum(len(c) for c in self.calc.chains.values()),
                "ipsets": len(self.calc.sets),
                "profile_errors": dict(self.calc.profile_problems)}

    def close(self) -> None:
        pass

    # -- internals ----------------------------------------------------------------------
    def _collect(self) -> None:
        chains, sets = self.calc.take_dirty()
        for family, names in chains.items():
            self._dirty_chains[family] |= names
        self._dirty_sets |= sets

    def _rebuild(self, store: Store, settings: Settings) -> None:
        self.settings = settings
        self.calc = HostPolicy(self.hostname, settings)
        everything = Changes(endpoints=set(store.endpoints) | set(store.endpoint_errors),
                             profiles=set(store.profile_rules) | set(store.profile_tags)
                             | set(store.profile_labels) | set(store.profile_errors))
        self.calc.update(store, everything)
        for table in self.tables.values():
            table.refresh()
        self.ipsets.refresh()


class PolicyGuard:
    """The first step of a start: the skeleton of felix-py's chains, where missing, before
    routes make any workload reachable (chains that exist are left to the policy manager's
    full reconcile).  ``fresh_host`` says there were none at all: no workload can be
    policed with another's rules there, so routes may go in before the policy manager
    applies (``agent.ApplyOrder``)."""
    name = "policy-guard"

    def __init__(self, policy: PolicyManager):
        self.policy = policy
        self.done = False
        self.fresh_host = False     # no felix-py chain existed here before the skeleton

    def on_changes(self, store: Store, changes: Changes, links) -> None:
        pass

    def apply(self) -> None:
        if self.done:
            return
        found = [table.ensure(self.policy.calc.skeleton(family))
                 for family, table in self.policy.tables.items()]
        self.fresh_host = not any(found)
        self.done = True

    def endpoint_problems(self) -> dict[EndpointId, tuple[str, str]]:
        return {}

    def close(self) -> None:
        pass


def _report_backend() -> None:
    backend = host_backend()
    if backend == PROGRAMMED_BACKEND:
        log.info("iptables backend: the host's iptables uses %s, as felix-py does", backend)
    else:
        log.warning("iptables backend: the host's `iptables` command uses %s but felix-py "
                    "programs %s; inspect felix-py's chains with iptables-legacy-save, and "
                    "mind that rules in both backends apply to every packet",
                    backend, PROGRAMMED_BACKEND)
