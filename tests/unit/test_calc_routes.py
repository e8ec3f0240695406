"""What the host's routing should hold for its workloads (pure)."""

from felix_py import model
from felix_py.calc.routes import workload_state
from felix_py.datastore.keys import EndpointId
from felix_py.dataplane.links import LinkInfo


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
