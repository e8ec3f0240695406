"""ExaBGP's configuration file and environment for one host (pure).

``render(plan, options)`` returns the text of the configuration and the peers it had to
leave out.  Every value is checked here against what ExaBGP's own parser accepts, so that
ExaBGP is never handed a file it would refuse: a peer that fails a check is left out (and
reported) while the others keep their sessions.  ``environment(...)`` is the process
environment that makes ExaBGP a well-behaved child of the agent: no listening socket, no
privilege drop, no CLI pipes, acknowledgements on, logs on stderr.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from bgp.config import NODE_MESH, BgpPlan, Peer

PROCESS = "felix"
MAX_PASSWORD_BYTES = 80          # TCP MD5 keys (RFC 2385, Linux TCP_MD5SIG_MAXKEYLEN)
_PASSWORD_FORBIDDEN = set('"\'\\;{}#[],')


@dataclass(frozen=True)
class Options:
    helper: tuple[str, ...]          # argv of the API helper ExaBGP runs (first: absolute path)
    hold_time: int = 9
    graceful_restart: int = 120      # seconds announced to peers; 0 switches it off


class ConfigRejected(ValueError):
    """A value ExaBGP would refuse."""


def check_peer(peer: Peer, plan: BgpPlan) -> None:
    """Raise ConfigRejected saying why ExaBGP would refuse this peer."""
    try:
        ip = ipaddress.ip_address(peer.ip)
    except ValueError:
        raise ConfigRejected(f"{peer.ip!r} is not an IP address") from None
    if ip.is_multicast or ip.is_unspecified:
        raise ConfigRejected(f"{peer.ip} cannot be a BGP neighbour")
    _check_as(peer.as_num, f"peer {peer.ip}")
    if peer.port is not None and not 1 <= peer.port <= 65535:
        raise ConfigRejected(f"port {peer.port} is out of range 1-65535")
    if peer.password is not None:
        pw = peer.password
        if not pw or not pw.isascii() or not pw.isprintable():
            raise ConfigRejected("the password must be printable ASCII")
        if len(pw.encode()) > MAX_PASSWORD_BYTES:
            raise ConfigRejected(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
        if _PASSWORD_FORBIDDEN & set(pw) or pw != pw.strip():
            raise ConfigRejected("the password may not contain quotes, backslashes, "
                                 "; { } # [ ] , or leading/trailing spaces")


def _check_as(as_num: int, what: str) -> None:
    if isinstance(as_num, bool) or not isinstance(as_num, int) or not 1 <= as_num <= 4294967295:
        raise ConfigRejected(f"{what}: AS {as_num!r} is out of range 1-4294967295")


def render(plan: BgpPlan, options: Options,
           local_addresses: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """(configuration text, {peer ip: why it was left out}).

    ``local_addresses``: peer ip -> this host's address towards it.  ExaBGP needs it to
    resolve "next hop self" before the session is up, and to accept a session from the
    peer; a peer without one gets ExaBGP's automatic choice when it connects."""
    if not plan.enabled or not plan.router_id:
        raise ConfigRejected("BGP is not enabled on this host (no ip_addr_v4)")
    rid = ipaddress.ip_address(plan.router_id)
    if rid.version != 4 or rid.is_unspecified:
        raise ConfigRejected(f"router id {plan.router_id} must be a non-zero IPv4 address")
    _check_as(plan.local_as, "local AS")
    if not (options.hold_time == 0 or 3 <= options.hold_time <= 65535):
        raise ConfigRejected(f"hold time {options.hold_time} must be 0 or 3-65535")
    if not 0 <= options.graceful_restart <= 4095:
        raise ConfigRejected(f"graceful-restart time {options.graceful_restart} must be 0-4095")
    helper = options.helper
    if not helper or not helper[0].startswith("/") or \
            any(not a or any(c.isspace() or c in ';{}#"\'' for c in a) for a in helper):
        raise ConfigRejected(f"API helper {' '.join(helper)!r} needs an absolute path and "
                             "arguments without spaces or ; {{ }} # quotes")

    rejected: dict[str, str] = {}
    blocks = []
    for peer in plan.peers:
        try:
            check_peer(peer, plan)
        except ConfigRejected as e:
            rejected[peer.ip] = str(e)
            continue
        local = (local_addresses or {}).get(peer.ip)
        if local is not None:
            try:
                if ipaddress.ip_address(local).version != ipaddress.ip_address(peer.ip).version:
                    raise ValueError
            except ValueError:
                rejected[peer.ip] = f"local address {local!r} does not suit peer {peer.ip}"
                continue
        blocks.append(_neighbor(peer, plan, options, local))
    text = (f"# felix-py: ExaBGP configuration of host {plan.hostname} "
            f"(mode {plan.mode}); generated, do not edit.\n\n"
            f"process {PROCESS} {{\n"
            f"    run {' '.join(helper)};\n"
            f"    encoder json;\n"
            f"}}\n" + "".join(blocks))
    return text, rejected


def _neighbor(peer: Peer, plan: BgpPlan, options: Options, local: str | None) -> str:
    family = "ipv4 unicast" if peer.version == 4 else "ipv6 unicast"
    lines = [
        f'description "{peer.peer_type}";',
        f"router-id {plan.router_id};",
        *([f"local-address {local};"] if local else []),
        f"local-as {plan.local_as};",
        f"peer-as {peer.as_num};",
        f"hold-time {options.hold_time};",
        # Routes come from the API; the agent sends End-of-RIB itself once it has
        # announced everything, so that a restart does not flush the peer's stale routes
        # early (graceful restart).
        "manual-eor true;",
        "group-updates true;",
    ]
    if peer.port:
        lines.append(f"connect {peer.port};")
    if peer.peer_type == NODE_MESH and _ip_key(plan.router_id) > _ip_key(peer.ip):
        # Both ends of a mesh session listen; only the lower address connects, so that
        # the two never race each other's connection (a collision drops one).
        lines.append("passive true;")
    if peer.password:
        lines.append(f'md5-password "{peer.password}";')
    caps = ["route-refresh;"]
    if options.graceful_restart:
        caps.append(f"graceful-restart {options.graceful_restart};")
    body = "\n".join(f"    {ln}" for ln in lines)
    return (f"\nneighbor {peer.ip} {{\n{body}\n"
            f"    family {{\n        {family};\n    }}\n"
            f"    capability {{\n" + "".join(f"        {c}\n" for c in caps) + "    }\n"
            f"    api {{\n"
            f"        processes [ {PROCESS} ];\n"
            f"        neighbor-changes;\n"
            f"        receive {{\n            parsed;\n            update;\n"
            f"            notification;\n        }}\n"
            f"    }}\n"
            f"}}\n")


def listen_addresses(plan: BgpPlan) -> tuple[str, ...]:
    """Where ExaBGP must accept sessions: only node-mesh peers connect to a host."""
    if any(p.peer_type == NODE_MESH for p in plan.peers):
        return (plan.router_id,)
    return ()


def _ip_key(ip: str) -> tuple[int, int]:
    a = ipaddress.ip_address(ip)
    return a.version, int(a)


def environment(env_file: str, log_level: str = "WARNING",
                listen: tuple[str, ...] = ()) -> dict[str, str]:
    """ExaBGP settings for a child of the agent (passed as environment variables)."""
    return {
        # An environment file of our own, so that no system-wide exabgp.env applies.
        "EXABGP_ENVFILE": env_file,
        "exabgp.daemon.daemonize": "false",
        "exabgp.daemon.user": "root",
        "exabgp.daemon.drop": "false",
        "exabgp.daemon.pid": "",
        # Listen only where peers connect to the host (node mesh); otherwise the host
        # always connects out.
        "exabgp.tcp.bind": " ".join(listen),
        "exabgp.tcp.attempts": "0",
        "exabgp.api.ack": "true",
        "exabgp.api.encoder": "json",
        "exabgp.api.compact": "false",
        "exabgp.api.cli": "false",
        # The helper dying means the agent is gone: exit rather than respawn it.
        "exabgp.api.respawn": "false",
        "exabgp.api.terminate": "true",
        "exabgp.log.destination": "stderr",
        "exabgp.log.level": log_level,
        "exabgp.log.short": "true",
        "exabgp.log.processes": "false",
        "exabgp.log.routes": "false",
        "exabgp.log.packets": "false",
        "exabgp.log.rib": "false",
        "exabgp.log.message": "false",
        "exabgp.log.configuration": "true",
        "exabgp.log.network": "true",
        "exabgp.log.reactor": "true",
        "exabgp.log.statistics": "false",
        "exabgp.cache.attributes": "true",
        "exabgp.reactor.speed": "0.1",
    }
