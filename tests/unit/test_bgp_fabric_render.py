"""bgp.fabric: BIRD configurations from the datastore, checked by BIRD's own parser."""

import shutil
import subprocess

import pytest

from bgp import fabric
from felix_py import model
from felix_py.calc.store import BgpSettings

pytestmark = pytest.mark.skipif(shutil.which("bird") is None, reason="needs BIRD 2 (bird2)")


def bird_accepts(tmp_path, text):
    path = tmp_path / "bird.conf"
    path.write_text(text)
    r = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)
    return r.returncode == 0, r.stderr


def peer(ip, as_num, password=None):
    return model.BgpPeer(ip=ip, as_num=as_num, password=password)


def settings():
    b = BgpSettings(as_num=64512)
    b.host_ip_v4 = {"h1": "10.1.0.11", "h-2.x": "10.1.0.12", "h3": "10.2.0.13"}
    b.host_peers = {"h1": {"10.1.0.1": peer("10.1.0.1", 65101, "pass word#1")},
                    "h-2.x": {"10.1.0.1": peer("10.1.0.1", 65101)},
                    "h3": {"10.1.0.1": peer("10.1.0.1", 65101),
                           "10.2.0.1": peer("10.2.0.1", 65102)},
                    "h9": {"10.9.0.1": peer("10.9.0.1", 65109)}}
    b.route_reflectors = {"10.3.0.1": model.RouteReflector(ip="10.3.0.1", cluster_id="1.0.0.1"),
                          "10.3.0.2": model.RouteReflector(ip="10.3.0.2", cluster_id="1.0.0.1")}
    b.rr_cluster_id = {"h1": "1.0.0.1", "h3": "1.0.0.1", "h-2.x": "2.0.0.2"}
    return b


def test_tor_peers_with_its_rack_and_sends_only_the_default(tmp_path):
    text = fabric.render_tor(settings(), ["10.65.0.0/16", "fd00::/64"], name="tor1",
                             router_id="10.1.0.1", local_as=65101, addresses=["10.1.0.1/24"],
                             uplinks=[("10.0.1.1", 65000)])
    ok, err = bird_accepts(tmp_path, text)
    assert ok, err
    assert "protocol bgp host_h1 from rack_host" in text and 'password "pass word#1";' in text
    assert "protocol bgp host_h_2_x from rack_host" in text      # a BIRD-safe name
    # h3 peers from its rack-2 address: accepted dynamically from the link's prefix.
    assert "neighbor range 10.1.0.0/24 as 64512;" in text
    assert "h9" not in text                                       # another ToR's host
    assert "define WORKLOAD_NETS = [ 10.65.0.0/16+ ];" in text
    assert "if net = 0.0.0.0/0 then accept;" in text
    assert "protocol bgp uplink_10_0_1_1" in text and "neighbor 10.0.1.1 as 65000;" in text


def test_core_and_route_reflector(tmp_path):
    core = fabric.render_core(name="core", router_id="10.0.0.1", local_as=65000,
                              tors=[("10.0.1.2", 65101), ("10.0.2.2", 65102, "pw")])
    ok, err = bird_accepts(tmp_path, core)
    assert ok, err
    assert "route 0.0.0.0/0 blackhole;" in core and "protocol bgp tor_10_0_2_2" in core
    rr = fabric.render_route_reflector(settings(), rr_ip="10.3.0.1")
    ok, err = bird_accepts(tmp_path, rr)
    assert ok, err
    assert "rr cluster id 1.0.0.1;" in rr
    assert "neighbor 10.1.0.11 as 64512;" in rr and "neighbor 10.2.0.13 as 64512;" in rr
    assert "10.1.0.12" not in rr                                  # another cluster
    assert "protocol bgp rr_10_3_0_2 {" in rr                     # the other reflector


def test_settings_bird_would_refuse_are_errors_naming_what_to_fix():
    b = settings()
    with pytest.raises(fabric.RenderError, match="peer_v4/10.1.0.1"):
        fabric.render_tor(b, [], name="t", router_id="10.1.0.1", local_as=65999,
                          addresses=["10.1.0.1/24"])
    with pytest.raises(fabric.RenderError, match="prefix length"):
        fabric.render_tor(b, [], name="t", router_id="10.1.0.1", local_as=65101,
                          addresses=["10.1.0.1"])
    with pytest.raises(fabric.RenderError, match="rr_v4/10.3.0.9"):
        fabric.render_route_reflector(b, rr_ip="10.3.0.9")
    with pytest.raises(fabric.RenderError, match="out of range"):
        fabric.render_core(name="c", router_id="10.0.0.1", local_as=0, tors=[])
    b.host_as_num["h3"] = 65003
    with pytest.raises(fabric.RenderError, match="one AS"):
        fabric.render_route_reflector(b, rr_ip="10.3.0.1")
