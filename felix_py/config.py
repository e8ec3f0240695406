"""Every agent setting, declared once: name, type, default and help.

Values are read with the precedence environment (``FELIX_<NAME>``, NAME in upper snake
case) > config file (YAML mapping of ``Name: value``) > per-host key in etcd
(``/calico/v1/host/<host>/config/<Name>``) > global key in etcd
(``/calico/v1/config/<Name>``) > default.  Bootstrap settings (how to reach etcd, which host
this is) cannot come from etcd.  A value that does not parse is logged with its source and
the next source is used instead.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable, Mapping


log = logging.getLogger(__name__)


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(v: str) -> int:
        n = int(str(v).strip())
        if not lo <= n <= hi:
            raise ValueError(f"{n} is out of range {lo}-{hi}")
        return n
    return parse


def _float_pos(v: str) -> float:
    n = float(str(v).strip())
    if n <= 0:
        raise ValueError(f"{n} must be positive")
    return n


def _choice(*options: str) -> Callable[[str], str]:
    def parse(v: str) -> str:
        s = str(v).strip().upper()
        if s not in options:
            raise ValueError(f"{v!r} is not one of {', '.join(options)}")
        return s
    return parse


def _ports(v: str) -> tuple[tuple[str, int], ...]:
    """"tcp:22,udp:53" -> (("tcp", 22), ("udp", 53))."""
    out = []
    for item in filter(None, (x.strip() for x in str(v).split(","))):
        proto, _, port = item.rpartition(":")
        proto = (proto or "tcp").lower()
        if proto not in ("tcp", "udp") or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not <tcp|udp>:<port>")
        out.append((proto, int(port)))
    return tuple(out)


def _str(v: str) -> str:
    return str(v).strip()


def _prefixes(v: str) -> tuple[str, ...]:
    out = tuple(filter(None, (x.strip() for x in str(v).split(","))))
    for p in out:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,14}", p):
            raise ValueError(f"{p!r} is not a valid interface prefix")
    return out


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    local_only: bool = False

    @property
    def env(self) -> str:
        return "FELIX_" + re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", self.name).upper()

    @property
    def attr(self) -> str:
        return self.env[len("FELIX_"):].lower()


SETTINGS: tuple[Setting, ...] = (
    Setting("EtcdEndpoints", _str, "", "Comma-separated etcd client URLs; empty means the "
            "local embedded etcd recorded by `felixctl lab up` or `felixctl datastore start`.",
            local_only=True),
    Setting("EtcdCaFile", _str, "", "CA certificate to verify etcd's TLS certificate.",
            local_only=True),
    Setting("EtcdCertFile", _str, "", "Client certificate for etcd TLS.", local_only=True),
    Setting("EtcdKeyFile", _str, "", "Client private key for etcd TLS.", local_only=True),
    Setting("EtcdPrefix", _str, "/calico", "Root of every key felix-py uses.",
            local_only=True),
    Setting("Hostname", _str, "", "This host's name in the datastore (default: the "
            "system hostname).", local_only=True),
    Setting("LogLevel", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO",
            "Log level."),
    Setting("ReportingIntervalSecs", _float_pos, 5.0, "Seconds between status heartbeats."),
    Setting("ReportingTtlSecs", _int_range(2, 3600), 20, "TTL of the etcd lease behind "
            "this host's status keys; they vanish this long after the agent dies."),
    Setting("HealthHost", _str, "127.0.0.1", "Address for /livez, /readyz and /metrics."),
    Setting("HealthPort", _int_range(0, 65535), 9099, "Port for /livez, /readyz and "
            "/metrics; 0 disables the server."),
    Setting("RouteProtocol", _int_range(5, 254), 98, "Route protocol number that marks "
            "the routes the agent owns (reconciliation deletes only these)."),
    Setting("InterfacePrefix", _prefixes, ("cali",), "Comma-separated prefixes of "
            "workload interface names; policy dispatch matches these."),
    Setting("DefaultEndpointToHostAction", _choice("DROP", "RETURN", "ACCEPT"), "DROP",
            "What happens to traffic from a workload to its own host: DROP, RETURN (to the "
            "host's own INPUT rules) or ACCEPT."),
    Setting("FailsafeInboundHostPorts", _ports, (("tcp", 22),), "Ports on the host that "
            "are always reachable, whatever the policy (tcp:22,udp:68)."),
    Setting("FailsafeOutboundHostPorts", _ports, (("tcp", 2379), ("tcp", 2380)),
            "Ports the host may always reach outbound (etcd)."),
    Setting("DataplaneRefreshSecs", _int_range(0, 86400), 90, "Seconds between full "
            "re-reads of the kernel's routes with RouteProtocol, felix-py's iptables chains "
            "and ipsets, and the workload interfaces' settings, which put back what "
            "something else removed or changed; 0 turns them off."),
    Setting("ExabgpPath", _str, "", "ExaBGP executable; empty means the one installed "
            "beside felix-py.", local_only=True),
    Setting("BgpGracefulRestartSecs", _int_range(0, 4095), 120, "Graceful-restart time "
            "announced to BGP peers."),
    Setting("BgpHoldTimeSecs", _int_range(3, 65535), 9, "BGP hold time."),
    Setting("BgpMaxDefaultRoutes", _int_range(1, 64), 8, "At most this many next hops in "
            "the ECMP default route."),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


class ConfigError(ValueError):
    pass


class Config:
    """Resolved settings; ``cfg.etcd_endpoints`` or ``cfg["EtcdEndpoints"]``."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str]):
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "sources", sources)
        for s in SETTINGS:
            object.__setattr__(self, s.attr, values[s.name])

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __setattr__(self, key, value):
        raise AttributeError("Config is immutable; load a new one")

    def __eq__(self, other):
        return isinstance(other, Config) and self._values == other._values


def read_file(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    import yaml     # here, not at the top: 20 ms of every agent start without a config file
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of Name: value")
    unknown = sorted(set(data) - set(BY_NAME))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(BY_NAME)}")
    return {k: "" if v is None else (",".join(map(str, v)) if isinstance(v, list) else str(v))
            for k, v in data.items()}


def parse_value(name: str, raw: str) -> Any:
    """Parse one setting's raw text, raising ConfigError naming the setting."""
    setting = BY_NAME.get(name)
    if setting is None:
        raise ConfigError(f"unknown setting {name!r}")
    try:
        return setting.parse(raw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"setting {name}: {e}") from None


def load(env: Mapping[str, str] | None = None, file_values: Mapping[str, str] | None = None,
         host_values: Mapping[str, str] | None = None,
         global_values: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    layers = [("environment", {s.name: env[s.env] for s in SETTINGS if s.env in env}),
              ("config file", file_values or {}),
              ("host key", host_values or {}),
              ("global key", global_values or {})]
    values, sources = {}, {}
    for s in SETTINGS:
        for source, layer in layers:
            if s.name not in layer:
                continue
            if s.local_only and source in ("host key", "global key"):
                log.warning("setting %s cannot come from etcd (%s); ignored", s.name, source)
                continue
            try:
                values[s.name] = s.parse(layer[s.name])
                sources[s.name] = source
                break
            except (ValueError, TypeError) as e:
                log.error("setting %s from %s: %r is invalid (%s); using the next source",
                          s.name, source, layer[s.name], e)
        else:
            values[s.name] = s.default
            sources[s.name] = "default"
    if not values["Hostname"]:
        values["Hostname"] = socket.gethostname()
    return Config(values, sources)
