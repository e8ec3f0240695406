"""bgp.exabgp_config: ExaBGP's configuration per mode, checked by ExaBGP's own parser."""

import os
import subprocess
import sys

import pytest

from bgp.config import GLOBAL, NODE_MESH, ROUTE_REFLECTOR, TOR, BgpPlan, Peer
from bgp.driver import launcher_argv
from bgp.exabgp_config import ConfigRejected, Options, environment, listen_addresses, render

OPTS = Options(helper=(sys.executable, "-m", "bgp.bridge", "/tmp/felix-test/api.sock"))


def exabgp_accepts(tmp_path, text):
    path = tmp_path / "exabgp.conf"
    path.write_text(text)
    env = dict(os.environ, **environment(str(tmp_path / "exabgp.env")))
    # The entry point the driver runs ExaBGP through.
    r = subprocess.run(launcher_argv() + ["validate", str(path)], env=env,
                       capture_output=True, text=True, timeout=60)
    return r.returncode == 0, r.stdout + r.stderr


def plan(mode, *peers, rid="10.1.0.11"):
    return BgpPlan("h1", True, mode, 64512, rid, tuple(peers))


def test_downward_default_to_two_tors(tmp_path):
    p = plan("downward-default", Peer("10.1.0.1", 65101, TOR, password="s3cret pw"),
             Peer("10.2.0.1", 65102, TOR, port=1179))
    text, rejected = render(p, OPTS, {"10.1.0.1": "10.1.0.11"})
    assert rejected == {}
    assert "neighbor 10.1.0.1 {" in text and "peer-as 65101;" in text
    assert 'md5-password "s3cret pw";' in text and "connect 1179;" in text
    assert "local-address 10.1.0.11;" in text
    assert "graceful-restart 120;" in text and "hold-time 9;" in text
    assert "manual-eor true;" in text          # End-of-RIB only after re-announcing
    assert f"run {sys.executable} -m bgp.bridge /tmp/felix-test/api.sock;" in text
    ok, out = exabgp_accepts(tmp_path, text)
    assert ok, out


def test_route_reflector_and_node_mesh_accepted(tmp_path):
    rr = plan("route-reflector", Peer("10.9.0.1", 64512, ROUTE_REFLECTOR))
    mesh = plan("node-mesh", Peer("10.1.0.2", 64512, NODE_MESH),
                Peer("10.1.0.99", 64512, NODE_MESH))
    for p in (rr, mesh):
        text, rejected = render(p, OPTS, {x.ip: "10.1.0.11" for x in p.peers})
        assert rejected == {}
        ok, out = exabgp_accepts(tmp_path, text)
        assert ok, out
    text, _ = render(mesh, OPTS)
    # Only the lower address connects; both listen on the host's BGP address.
    blocks = text.split("neighbor ")
    assert "passive true;" in next(b for b in blocks if b.startswith("10.1.0.2 "))
    assert "passive true;" not in next(b for b in blocks if b.startswith("10.1.0.99 "))
    assert listen_addresses(mesh) == ("10.1.0.11",) and listen_addresses(rr) == ()


def test_peers_exabgp_would_refuse_are_left_out_and_the_rest_kept(tmp_path):
    p = plan("downward-default",
             Peer("10.1.0.1", 65101, TOR, password="caf\u00e9"),          # not ASCII
             Peer("10.1.0.2", 65101, TOR, password="a#b"),                # comment char
             Peer("10.1.0.3", 0, GLOBAL),                                 # AS out of range
             Peer("224.0.0.5", 65101, GLOBAL),                            # multicast
             Peer("10.1.0.4", 65101, TOR, password="x" * 81),             # too long for MD5
             Peer("10.1.0.5", 65101, TOR))
    text, rejected = render(p, OPTS, {"10.1.0.5": "fe80::1"})
    assert set(rejected) == {"10.1.0.1", "10.1.0.2", "10.1.0.3", "224.0.0.5", "10.1.0.4",
                             "10.1.0.5"}
    assert "ASCII" in rejected["10.1.0.1"] and "out of range" in rejected["10.1.0.3"]
    text, rejected = render(p, OPTS)
    assert "neighbor 10.1.0.5 {" in text and "10.1.0.1 {" not in text
    ok, out = exabgp_accepts(tmp_path, text)
    assert ok, out


def test_settings_exabgp_would_refuse_are_errors():
    with pytest.raises(ConfigRejected, match="not enabled"):
        render(BgpPlan("h1", False), OPTS)
    with pytest.raises(ConfigRejected, match="hold time"):
        render(plan("downward-default"), Options(helper=OPTS.helper, hold_time=2))
    with pytest.raises(ConfigRejected, match="absolute path"):
        render(plan("downward-default"), Options(helper=("python", "-m", "x")))
    with pytest.raises(ConfigRejected, match="router id"):
        render(plan("downward-default", rid="0.0.0.0"), OPTS)


def test_environment_makes_a_quiet_child():
    env = environment("/x/exabgp.env")
    assert env["exabgp.tcp.bind"] == ""                    # no listening socket
    assert env["exabgp.api.ack"] == "true" and env["exabgp.api.cli"] == "false"
    assert env["exabgp.daemon.user"] == "root" and env["exabgp.daemon.drop"] == "false"
    assert env["EXABGP_ENVFILE"] == "/x/exabgp.env"
    assert environment("/x", listen=("10.1.0.11",))["exabgp.tcp.bind"] == "10.1.0.11"
