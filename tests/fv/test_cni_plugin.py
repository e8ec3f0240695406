"""felix-cni driven exactly as a container runtime drives it: CNI_* variables, the network
configuration on stdin, run inside a test "host" namespace (etcd reached over its unix
socket), the container a namespace the test created; the result read from stdout."""

import json
import os
import subprocess

import pytest

from felix_py.cni import spec
from felix_py.cni.link import host_ifname
from felix_py.datastore.keys import EndpointId
from felix_py.datastore.registration import NotFound
from felix_py.ipam import Ipam
from felix_py.lab.netns import wait_for

PLUGIN = "/work/venv/bin/felix-cni"
HOST = "host-a"
AGENT = os.path.join(os.path.dirname(__file__), "..", "..", "felix_py", "agent.py")


class Runtime:
    """What a container runtime does: run the plugin with the variables and stdin."""

    def __init__(self, host_ns, conf):
        self.host_ns, self.conf = host_ns, conf

    def __call__(self, command, container="", netns=None, ifname="eth0", args="", **conf):
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"}
        if container:
            env["CNI_CONTAINERID"] = container
        if netns is not None:
            env["CNI_NETNS"] = netns if isinstance(netns, str) else f"/var/run/netns/{netns.name}"
        if ifname:
            env["CNI_IFNAME"] = ifname
        if args:
            env["CNI_ARGS"] = args
        r = subprocess.run(self.host_ns.exec_argv([PLUGIN]),
                           input=json.dumps({**self.conf, **conf}), capture_output=True,
                           text=True, env=env, timeout=60)
        out = json.loads(r.stdout) if r.stdout.strip() else None
        if r.returncode != 0:
            assert out and out["code"] and out["msg"], (r.stdout, r.stderr)
        return r.returncode, out


@pytest.fixture
def host(host_factory):
    return host_factory("cnih")


@pytest.fixture
def cni(etcd, prefix, host, registry):
    registry.add_pool("10.65.0.0/24")
    return Runtime(host, {"cniVersion": "1.0.0", "name": "net1", "type": "felix-cni",
                          "etcd_endpoints": etcd.unix_endpoint, "etcd_prefix": prefix,
                          "hostname": HOST})


@pytest.fixture
def ipam(client, layout):
    return Ipam(client, layout, HOST)


def eid(container, ifname="eth0"):
    return EndpointId(HOST, "cni", container, ifname)


def links(ns):
    return {line.split(":")[1].strip().split("@")[0]
            for line in ns.run("ip -o link show").stdout.splitlines()}


def addresses(ns, dev="eth0"):
    return ns.run(f"ip -o addr show dev {dev} scope global").stdout.split()


def test_add_plugs_the_container_in_and_del_removes_all_of_it(cni, host, netns_factory,
                                                              registry, ipam):
    c1 = netns_factory("cnic")
    code, result = cni("ADD", "c1", c1, args="FELIX_LABELS=app=web,tier=front",
                       labels={"env": "test"})
    assert code == 0, result
    host_if = host_ifname(eid("c1"))
    ip = result["ips"][0]["address"].split("/")[0]
    assert result["cniVersion"] == "1.0.0"
    assert result["interfaces"][0] == {"name": host_if, "mac": "ee:ee:ee:ee:ee:ee"}
    assert result["interfaces"][1]["name"] == "eth0"
    assert result["interfaces"][1]["sandbox"] == f"/var/run/netns/{c1.name}"
    assert result["ips"] == [{"address": f"{ip}/32", "interface": 1}]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]

    # The container: its address as /32 on eth0, Calico's two routes.
    assert f"{ip}/32" in addresses(c1)
    assert c1.routes() == ["default via 169.254.1.1 dev eth0 proto static",
                           "169.254.1.1 dev eth0 proto static scope link"]
    # The host: the veth's host end, up, answering ARP for 169.254.1.1.
    assert host_if in links(host) and "eth0" not in links(host)
    assert "state UP" in host.run(f"ip link show {host_if}").stdout
    assert host.run(f"sysctl -n net.ipv4.conf.{host_if}.proxy_arp").stdout.strip() == "1"
    # The endpoint, with labels from the configuration and CNI_ARGS, the network's profile.
    ep = registry.get_endpoint(eid("c1"))
    assert ep.name == host_if and ep.ipv4_nets == [f"{ip}/32"]
    assert ep.mac == result["interfaces"][1]["mac"]
    assert ep.labels == {"env": "test", "app": "web", "tier": "front"}
    assert ep.profile_ids == ["net1"] and registry.profile_exists("net1")
    assert ipam.ips_by_handle("net1.c1.eth0") == [ip]

    code, out = cni("DEL", "c1", c1)
    assert (code, out) == (0, None)
    assert host_if not in links(host) and "eth0" not in links(c1)
    with pytest.raises(NotFound):
        registry.get_endpoint(eid("c1"))
    assert ipam.lookup(ip) is None and ipam.handle("net1.c1.eth0") is None
    # DEL is idempotent, also without the namespace, and for a container never added.
    assert cni("DEL", "c1", c1) == (0, None)
    assert cni("DEL", "c1") == (0, None)
    assert cni("DEL", "never-added", "/var/run/netns/gone-long-ago") == (0, None)


@pytest.mark.skipif(not os.path.exists(AGENT), reason="the agent is not built yet")
def test_a_container_added_by_the_plugin_is_pinged_by_another_on_the_host(
        cni, host, netns_factory, agent_factory, registry):
    agent = agent_factory(host, HOST)
    agent.wait_ready(registry)
    c1, c2 = netns_factory("cnic"), netns_factory("cnic")
    ips = []
    for name, ns in (("c1", c1), ("c2", c2)):
        code, result = cni("ADD", name, ns)
        assert code == 0, result
        ips.append(result["ips"][0]["address"].split("/")[0])
    assert c1.ping(ips[1], count=3) or c1.ping(ips[1], count=5)
    assert c2.ping(ips[0])
    # The block both addresses came from is this host's: the agent blackholes it whole, so
    # an unused address of it is dropped here rather than sent up the default route.
    block = Ipam(registry.client, registry.layout, HOST).affine_blocks(HOST, 4)[0]
    wait_for(lambda: any(r.split()[:2] == ["blackhole", block]
                         for r in host.routes("proto", "98")),
             what=f"blackhole route for {block}")
    assert cni("DEL", "c2", c2) == (0, None)
    assert not c1.ping(ips[1])


def test_check_passes_on_a_healthy_attachment_and_reports_a_removed_route(cni, netns_factory):
    c1 = netns_factory("cnic")
    code, result = cni("ADD", "c1", c1)
    assert code == 0
    assert cni("CHECK", "c1", c1, prevResult=result) == (0, None)
    c1.run("ip route del default")
    code, out = cni("CHECK", "c1", c1, prevResult=result)
    assert code == 1 and out["code"] == spec.CHECK_FAILED
    assert "route 0.0.0.0/0 via 169.254.1.1 is missing" in out["msg"]
    code, out = cni("CHECK", "c1", c1)
    assert out["code"] == spec.INVALID_CONFIG and "prevResult" in out["msg"]


def test_exhausted_pool_fails_with_nothing_held_and_no_veth(cni, host, netns_factory, registry,
                                                            ipam, client, prefix):
    registry.remove_pool("10.65.0.0/24")
    registry.add_pool("10.66.0.0/30", block_size=30)          # four addresses
    for i in range(4):
        assert cni("ADD", f"c{i}", netns_factory("cnic"))[0] == 0
    before_links = links(host)
    before = client.get_prefix(prefix + "/")[0]
    c5 = netns_factory("cnic")
    code, out = cni("ADD", "c5", c5)
    assert code == 1 and out["code"] == spec.IPAM_EXHAUSTED
    assert "10.66.0.0/30 have no free address" in out["msg"]
    assert links(host) == before_links and "eth0" not in links(c5)
    assert client.get_prefix(prefix + "/")[0] == before
    assert ipam.handle("net1.c5.eth0") is None


def test_missing_netns_and_incomplete_configuration_leave_nothing(cni, host, ipam, client,
                                                                 prefix, netns_factory):
    before_links = links(host)
    before = client.get_prefix(prefix + "/")[0]
    code, out = cni("ADD", "c1", "/var/run/netns/no-such-namespace")
    assert code == 1 and out["code"] == spec.UNKNOWN_CONTAINER and "does not exist" in out["msg"]
    conf = {k: v for k, v in cni.conf.items() if k != "name"}
    code, out = Runtime(cni.host_ns, conf)("ADD", "c1", netns_factory("cnic"))
    assert out["code"] == spec.INVALID_CONFIG and "'name'" in out["msg"]
    code, out = cni("ADD", "c1", netns_factory("cnic"), ifname="")
    assert out["code"] == spec.INVALID_ENVIRONMENT and "CNI_IFNAME" in out["msg"]
    code, out = cni("ADD", "c1", netns_factory("cnic"), etcd_endpoints="unix:///nonexistent.sock")
    assert out["code"] == spec.TRY_AGAIN_LATER and "unreachable" in out["msg"]
    assert links(host) == before_links
    assert client.get_prefix(prefix + "/")[0] == before


def test_repeated_add_is_refused_and_leaves_the_first_attachment_alone(cni, host,
                                                                       netns_factory, ipam):
    c1 = netns_factory("cnic")
    code, result = cni("ADD", "c1", c1)
    assert code == 0
    ip = result["ips"][0]["address"]
    code, out = cni("ADD", "c1", c1)
    assert code == 1 and out["code"] == spec.ALREADY_ATTACHED and "DEL it first" in out["msg"]
    assert addresses(c1).count(ip) == 1
    assert host_ifname(eid("c1")) in links(host)
    assert ipam.ips_by_handle("net1.c1.eth0") == [ip.split("/")[0]]
    assert cni("CHECK", "c1", c1, prevResult=result) == (0, None)
    # Another container id into the same namespace and interface: the name is taken.
    before_links = links(host)
    code, out = cni("ADD", "other", c1)
    assert code == 1 and out["code"] == spec.INTERNAL and "eth0 already exists" in out["msg"]
    assert links(host) == before_links and ipam.handle("net1.other.eth0") is None
    assert cni("CHECK", "c1", c1, prevResult=result) == (0, None)


def test_a_failure_after_the_veth_exists_rolls_everything_back(cni, host, netns_factory,
                                                               ipam, client, prefix):
    before = client.get_prefix(prefix + "/")[0]
    before_links = links(host)
    c1 = netns_factory("cnic")
    # The endpoint is refused at registration, the last step: a label value with a space.
    code, out = cni("ADD", "c1", c1, labels={"app": "not valid"})
    assert code == 1 and out["code"] == spec.INVALID_CONFIG and "label" in out["msg"]
    assert links(host) == before_links and "eth0" not in links(c1)
    after = [(k, v) for k, v, _ in client.get_prefix(prefix + "/")[0]
             if "/ipam/v2/assignment/" not in k and "/ipam/v2/host/" not in k
             and "/policy/profile/" not in k]
    assert after == [(k, v) for k, v, _ in before]
    assert ipam.handle("net1.c1.eth0") is None and list(ipam.allocations()) == []


def test_static_ip_dual_stack_and_older_result_format(cni, registry, netns_factory, ipam):
    registry.add_pool("fd00:65::/120")
    c1 = netns_factory("cnic")
    code, result = cni("ADD", "c1", c1, cniVersion="0.4.0", args="IP=10.65.0.42",
                       ipam={"assign_ipv4": True, "assign_ipv6": True})
    assert code == 0, result
    assert result["ips"][0] == {"address": "10.65.0.42/32", "interface": 1, "version": "4"}
    c2 = netns_factory("cnic")
    code, result = cni("ADD", "c2", c2, ipam={"assign_ipv4": True, "assign_ipv6": True})
    v6 = result["ips"][1]["address"]
    assert v6.startswith("fd00:65::") and v6.endswith("/128")
    assert v6 in c2.run("ip -6 -o addr show dev eth0").stdout
    assert "default via fe80::ecee:eeff:feee:eeee dev eth0" in c2.run("ip -6 route").stdout
    code, out = cni("ADD", "c3", netns_factory("cnic"), args="IP=10.65.0.42")
    assert out["code"] == spec.IPAM_EXHAUSTED and "already held" in out["msg"]


def test_status_and_gc_of_spec_1_1(cni, registry, netns_factory, ipam, host):
    v11 = {"cniVersion": "1.1.0"}
    assert cni("STATUS", **v11) == (0, None)
    c1, c2 = netns_factory("cnic"), netns_factory("cnic")
    assert cni("ADD", "c1", c1, **v11)[0] == 0
    assert cni("ADD", "c2", c2, **v11)[0] == 0
    valid = [{"containerID": "c1", "ifname": "eth0"}]
    assert cni("GC", **v11, **{"cni.dev/valid-attachments": valid}) == (0, None)
    assert ipam.handle("net1.c2.eth0") is None and ipam.handle("net1.c1.eth0") is not None
    assert host_ifname(eid("c2")) not in links(host) and host_ifname(eid("c1")) in links(host)
    with pytest.raises(NotFound):
        registry.get_endpoint(eid("c2"))
    registry.remove_pool("10.65.0.0/24")
    code, out = cni("STATUS", **v11)
    assert code == 1 and out["code"] == spec.NOT_AVAILABLE and "pool" in out["msg"]
