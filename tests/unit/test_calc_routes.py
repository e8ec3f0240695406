"""What the host's routing should hold for its workloads (pure)."""

from felix_py import model
from felix_py.calc.routes import exported_prefixes, workload_state
from felix_py.calc.store import Store
from felix_py.datastore.keys import EndpointId
from felix_py.dataplane.links import LinkInfo
from felix_py.ipam.blocks import new_block


def eid(name):
    return EndpointId("h1", "k8s", name, "eth0")


ENDPOINTS = {eid("a"): model.Endpoint(name="cali-a", ipv4_nets=["10.65.0.1/32"]),
             eid("b"): model.Endpoint(name="cali-b", ipv4_nets=["10.65.0.2/32"]),
             eid("c"): model.Endpoint(name="cali-c", ipv4_nets=["10.65.0.3/32"])}
LINKS = {"cali-a": LinkInfo(7, "cali-a", True, None), "cali-b": LinkInfo(8, "cali-b", False, None)}


def test_routes_only_through_links_that_exist_and_are_up():
    ws = workload_state(ENDPOINTS, LINKS.get)
    assert set(ws.routes) == {"10.65.0.1/32"} and ws.routes["10.65.0.1/32"].oif == 7
    assert ws.problems == {eid("b"): ("down", "interface cali-b is down"),
                           eid("c"): ("down", "interface cali-c does not exist")}


def test_exported_prefixes_are_owned_blocks_whole_and_addresses_outside_them():
    store = Store("h1")
    store.blocks["10.65.0.0/26"] = new_block("10.65.0.0/26", "h1", False)
    store.blocks["fd00:65::/122"] = new_block("fd00:65::/122", "h1", False)
    store.blocks["10.65.0.64/26"] = new_block("10.65.0.64/26", "h2", False)   # another host's
    eps = {"a": ["10.65.0.1/32", "10.65.0.63/32"],      # inside our block, first to last
           "b": ["10.65.0.64/32"],                        # just past it: in h2's block
           "c": ["10.66.0.1/32"]}
    for name, nets in eps.items():
        store.local_endpoints[eid(name)] = model.Endpoint(name=f"cali-{name}", ipv4_nets=nets)
    store.local_endpoints[eid("d")] = model.Endpoint(
        name="cali-d", ipv6_nets=["fd00:65::3f/128", "fd00:65::40/128"])
    store.local_endpoints[eid("e")] = model.Endpoint(name="cali-e", state="inactive",
                                                     ipv4_nets=["10.67.0.1/32"])
    assert exported_prefixes(store) == {"10.65.0.0/26", "fd00:65::/122", "10.65.0.64/32",
                                        "10.66.0.1/32", "fd00:65::40/128"}
    store.blocks.clear()
    assert exported_prefixes(store) == {"10.65.0.1/32", "10.65.0.63/32", "10.65.0.64/32",
                                        "10.66.0.1/32", "fd00:65::3f/128", "fd00:65::40/128"}


def test_exported_prefixes_find_addresses_among_many_adjacent_and_overlapping_blocks():
    store = Store("h1")
    for i in range(0, 256, 64):                     # four adjacent /26s: one run of addresses
        store.blocks[f"10.70.0.{i}/26"] = new_block(f"10.70.0.{i}/26", "h1", False)
    store.blocks["10.71.0.0/24"] = new_block("10.71.0.0/24", "h1", False)
    store.blocks["10.71.0.64/26"] = new_block("10.71.0.64/26", "h1", False)   # inside it
    store.blocks["10.72.0.0/26"] = new_block("10.72.0.0/26", "h1", False)
    inside = ["10.70.0.0/32", "10.70.0.63/32", "10.70.0.64/32", "10.70.0.255/32",
              "10.71.0.1/32", "10.71.0.200/32", "10.72.0.63/32"]
    outside = ["10.69.255.255/32", "10.70.1.0/32", "10.72.0.64/32", "10.73.0.1/32",
               "10.0.0.1/32"]
    store.local_endpoints[eid("a")] = model.Endpoint(name="cali-a", ipv4_nets=inside + outside)
    assert exported_prefixes(store) == set(store.blocks) | set(outside)
