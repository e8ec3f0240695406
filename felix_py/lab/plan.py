"""What the lab is made of: names, addresses, AS numbers and groups, computed from its size.

Pure: ``plan(Size(...), lab_id)`` returns the whole fabric as plain data, and the builder
(``felix_py.lab.fabric``), ``lab status`` and ``lab ping`` all read it from there, so they
agree on every address by construction.

Address plan (private ranges, only ever configured inside the lab's namespaces):

- management network 172.31.0.0/16: etcd at 172.31.0.1, host i at 172.31.0.0 + 9 + i;
- core <-> ToR r: the r-th /30 of 172.16.0.0/16 (core 172.16.0.1, ToR 172.16.0.2 for
  rack 1);
- ToR <-> host i: the i-th /30 of 172.20.0.0/16 (ToR 172.20.0.1, host 172.20.0.2 for host
  1: the host's BGP address and router id);
- workloads: the IP pool 10.65.0.0/16, handed out in blocks by felix-py's IPAM.

A dual-stack plan (``plan(size, lab_id, dual_stack=True)``) has all of the above and, on
every fabric link, an IPv6 address beside the IPv4 one (unique local addresses, one /64
per link, numbered like the IPv4 links but from 1):

- core <-> ToR r: fd00:172:16:<r>::/64 (core ::1, ToR ::2);
- ToR <-> host i: fd00:172:20:<i>::/64 (ToR ::1, host ::2: the host's IPv6 BGP address);
- workloads: the IPv6 pool fd00:10:65::/48 as well (IPAM blocks of /122).

(<r> and <i> are written in hex, as IPv6 groups are.)  The management network stays
IPv4: it is how the agents reach etcd, not part of the fabric.  The IPv4 half of a
dual-stack plan is the IPv4-only plan of the same size, address for address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field

POOL = "10.65.0.0/16"
POOL6 = "fd00:10:65::/48"
HOST_AS = 64512
CORE_AS = 65000
TOR_AS_BASE = 65100                 # ToR of rack r: AS 65100 + r
MGMT_NET = ipaddress.ip_network("172.31.0.0/16")
UPLINK_NET = ipaddress.ip_network("172.16.0.0/16")
RACK_NET = ipaddress.ip_network("172.20.0.0/16")
UPLINK_NET6 = ipaddress.ip_network("fd00:172:16::/48")
RACK_NET6 = ipaddress.ip_network("fd00:172:20::/48")
ETCD_PORT = 2379
MGMT_BRIDGE = "br-mgmt"

# The two security groups and their one export: web members may ping the db members
# labelled role=primary; nothing of db reaches web.
GROUPS = ("web", "db")
EXPORT = {"group": "db", "to_group": "web", "selector": 'role == "primary"',
          "protocol": "icmp"}
# The export of each IP version: a rule with protocol icmp is an IPv4 rule
# (docs/policy.md), so ping over IPv6 (a dual-stack lab) needs its own, with icmpv6.
EXPORTS = {4: EXPORT, 6: {**EXPORT, "protocol": "icmpv6"}}

LIMITS = {"racks": 50, "hosts_per_rack": 50, "workloads_per_host": 50}


class PlanError(ValueError):
    """A lab size that cannot be built."""


@dataclass(frozen=True)
class Size:
    racks: int = 2
    hosts_per_rack: int = 2
    workloads_per_host: int = 3

    def check(self) -> "Size":
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if not 1 <= value <= limit:
                flag = "--" + name.replace("_", "-")
                raise PlanError(f"{flag} {value} is out of range 1-{limit}")
        return self


@dataclass(frozen=True)
class Switch:
    name: str                       # core, tor1, tor2, ...
    as_num: int
    router_id: str
    rack: int | None = None         # None for the core


@dataclass(frozen=True)
class Link:
    """A point-to-point veth: ``a_if`` in node a with ``a_addr``, ``b_if`` in node b."""
    a: str
    a_if: str
    a_addr: str                     # address/prefix length
    b: str
    b_if: str
    b_addr: str
    a_addr6: str | None = None      # dual-stack only: the IPv6 addresses/prefix length
    b_addr6: str | None = None

    @property
    def a_addrs(self) -> tuple[str, ...]:
        """Node a's addresses on the link: IPv4, then IPv6 if it has one."""
        return tuple(filter(None, (self.a_addr, self.a_addr6)))

    @property
    def b_addrs(self) -> tuple[str, ...]:
        """Node b's addresses on the link: IPv4, then IPv6 if it has one."""
        return tuple(filter(None, (self.b_addr, self.b_addr6)))


@dataclass(frozen=True)
class Host:
    name: str                       # host1, host2, ... (its name in the datastore)
    index: int                      # 1-based, over the whole lab
    rack: int
    tor: str
    bgp_ip: str                     # on its ToR link: router id and BGP session address
    tor_ip: str                     # the ToR's end of that link: its only BGP peer
    tor_as: int
    mgmt_ip: str                    # address/prefix length on the management bridge
    bgp_ip6: str | None = None      # dual-stack only: its IPv6 BGP address (ip_addr_v6)
    tor_ip6: str | None = None      # and its ToR's (its IPv6 peer, peer_v6)


@dataclass(frozen=True)
class Workload:
    name: str                       # h1w1, h1w2, ...: the container id and workload name
    host: str
    group: str
    labels: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    lab_id: str
    size: Size
    core: Switch
    tors: tuple[Switch, ...]
    hosts: tuple[Host, ...]
    workloads: tuple[Workload, ...]
    uplinks: tuple[Link, ...]       # core <-> ToR
    rack_links: tuple[Link, ...]    # ToR <-> host
    dual_stack: bool = False        # IPv6 beside IPv4 on every fabric link and workload

    @property
    def versions(self) -> tuple[int, ...]:
        """The IP versions of the fabric: (4,), or (4, 6) when it is dual-stack."""
        return (4, 6) if self.dual_stack else (4,)

    @property
    def etcd_ip(self) -> str:
        return str(MGMT_NET[1])

    @property
    def etcd_url(self) -> str:
        return f"http://{self.etcd_ip}:{ETCD_PORT}"

    @property
    def nodes(self) -> list[str]:
        """Every namespace's short name, in build order."""
        return (["mgmt", self.core.name] + [t.name for t in self.tors]
                + [h.name for h in self.hosts] + [w.name for w in self.workloads])

    def netns(self, node: str) -> str:
        """The namespace of a node: the lab id keeps two labs (a user's, a test's) apart."""
        return f"{self.lab_id}-{node}"

    def hosts_of(self, tor: str) -> list[Host]:
        return [h for h in self.hosts if h.tor == tor]

    def workloads_of(self, host: str) -> list[Workload]:
        return [w for w in self.workloads if w.host == host]

    def to_json(self) -> dict:
        """The plan as the state file records it.  An IPv4-only plan leaves out the IPv6
        fields, so its record is what it always was."""
        data = asdict(self)
        if not self.dual_stack:
            del data["dual_stack"]
            for key, fields in (("uplinks", _V6_LINK), ("rack_links", _V6_LINK),
                                ("hosts", _V6_HOST)):
                for item in data[key]:
                    for name in fields:
                        del item[name]
        return data


_V6_LINK = ("a_addr6", "b_addr6")
_V6_HOST = ("bgp_ip6", "tor_ip6")


def _p2p(net: ipaddress.IPv4Network | ipaddress.IPv6Network, prefixlen: int,
         number: int) -> tuple[str, str]:
    """The two ends of a point-to-point link, with ``prefixlen``: the first and second
    address of the ``number``-th (0-based) /``prefixlen`` of ``net``.  The IPv4 links are
    /30s numbered from 0, the IPv6 ones /64s numbered from 1 (their group is the link's
    index)."""
    size = 1 << (net.max_prefixlen - prefixlen)
    link = ipaddress.ip_network((net.network_address + size * number, prefixlen))
    if not link.subnet_of(net):
        raise PlanError(f"the lab has more links than {net} holds")
    return f"{link[1]}/{prefixlen}", f"{link[2]}/{prefixlen}"


def address_of(cidr: str) -> str:
    """"10.0.0.1/30" -> "10.0.0.1"."""
    return cidr.split("/")[0]


def plan(size: Size, lab_id: str, dual_stack: bool = False) -> Plan:
    size.check()
    first_core, _ = _p2p(UPLINK_NET, 30, 0)
    core = Switch("core", CORE_AS, address_of(first_core))
    tors, hosts, workloads, uplinks, rack_links = [], [], [], [], []
    index = 0
    for r in range(1, size.racks + 1):
        core_addr, tor_addr = _p2p(UPLINK_NET, 30, r - 1)
        core6, tor6 = _p2p(UPLINK_NET6, 64, r) if dual_stack else (None, None)
        tor = Switch(f"tor{r}", TOR_AS_BASE + r, address_of(tor_addr), rack=r)
        tors.append(tor)
        uplinks.append(Link(core.name, tor.name, core_addr, tor.name, "core", tor_addr,
                            core6, tor6))
        for _ in range(size.hosts_per_rack):
            index += 1
            name = f"host{index}"
            tor_side, host_side = _p2p(RACK_NET, 30, index - 1)
            tor_side6, host_side6 = _p2p(RACK_NET6, 64, index) if dual_stack else (None, None)
            rack_links.append(Link(tor.name, name, tor_side, name, tor.name, host_side,
                                   tor_side6, host_side6))
            hosts.append(Host(name, index, r, tor.name, address_of(host_side), address_of(tor_side),
                              tor.as_num, f"{MGMT_NET[9 + index]}/{MGMT_NET.prefixlen}",
                              bgp_ip6=host_side6 and address_of(host_side6),
                              tor_ip6=tor_side6 and address_of(tor_side6)))
            for k in range(1, size.workloads_per_host + 1):
                workloads.append(_workload(index, k, first_in_rack=(index - 1)
                                           % size.hosts_per_rack == 0))
    return Plan(lab_id, size, core, tuple(tors), tuple(hosts), tuple(workloads),
                tuple(uplinks), tuple(rack_links), dual_stack)


def _workload(host_index: int, k: int, first_in_rack: bool) -> Workload:
    """Odd-numbered workloads of a host are web, even ones db; the db workloads on the
    first host of each rack are the primaries that web may reach."""
    name = f"h{host_index}w{k}"
    if k % 2:
        return Workload(name, f"host{host_index}", "web", {"app": "web"})
    return Workload(name, f"host{host_index}", "db",
                    {"app": "db", "role": "primary" if first_in_rack else "replica"})


def from_json(data: dict) -> Plan:
    """The plan back from the state file (an IPv4-only record has no IPv6 fields)."""
    return Plan(data["lab_id"], Size(**data["size"]), Switch(**data["core"]),
                tuple(Switch(**t) for t in data["tors"]), tuple(Host(**h) for h in data["hosts"]),
                tuple(Workload(**w) for w in data["workloads"]),
                tuple(Link(**x) for x in data["uplinks"]),
                tuple(Link(**x) for x in data["rack_links"]),
                bool(data.get("dual_stack", False)))
