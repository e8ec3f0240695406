"""felixctl status, node, bgp, diags, datastore and version: against a real etcd, a real
agent in a throwaway namespace, and the embedded etcd started and stopped as a user would."""

import json
import os
import subprocess
import sys
import tarfile
from datetime import datetime, timedelta, timezone

import pytest
from birdtext import bird_parses

from felix_py.datastore.embedded import free_port
from felix_py.lab.netns import wait_for

H = "ctl-host"
FELIXCTL = os.path.join(os.path.dirname(sys.executable), "felixctl")


def _stamp(ago: float = 0) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_real_agent_status_node_list_and_diags(ctl, registry, host_factory, workload_factory,
                                               agent_factory, etcd, prefix, tmp_path,
                                               monkeypatch):
    host = host_factory("cs")
    workload_factory(host, "w1", "cali1", "10.65.0.1")
    ctl("profile", "add", "web")
    ctl("endpoint", "add", "w1", "--host", H, "--interface", "cali1", "--ip", "10.65.0.1",
        "--profile", "web")
    ctl("bgp", "address", "192.0.2.5", "--host", H)
    agent = agent_factory(host, H)
    agent.wait_ready(registry)

    out = ctl("node", "status", "--host", H)
    assert "Agent:    alive (heartbeat" in out and "Version:  0.1.0" in out
    assert "No BGP peer status reported." in out
    monkeypatch.setenv("FELIX_HOSTNAME", H)
    data = ctl.json("status")
    assert data["host"] == H and data["agent"]["state"] == "alive" and data["agent"]["ready"]

    # What the agent cannot follow is in its heartbeat, and shown, until it changes.
    no_peers = f"BGP: host {H} has no BGP peers in mode downward-default"
    assert data["problems"] == [no_peers]
    assert f"Problems (settings the agent cannot follow):\n  - {no_peers}\n" in out
    ctl("bgp", "mode", "route-reflector", "--host", H)
    wait_for(lambda: "rr_cluster_id" in ctl("node", "status", "--host", H), 15,
             what="the missing cluster id among the agent's problems")
    [problem] = ctl.json("node", "status", "--host", H)["problems"]
    assert problem.startswith("BGP: ") and "route-reflector" in problem
    ctl("bgp", "mode", "--clear", "--host", H)
    wait_for(lambda: ctl.json("node", "status", "--host", H)["problems"] == [no_peers], 15,
             what="the agent's problems back as they were once the mode is cleared")

    wait_for(lambda: "up" in ctl("endpoint", "list", "--host", H), what="endpoint up")
    row = next(line.split() for line in ctl("node", "list").splitlines() if line.startswith(H))
    assert row[:4] == [H, "192.0.2.5", "64512", "downward-default"]
    assert row[4] == "alive" and row[-2:] == ["1", "1"]

    # diags, run inside the host's namespace as an operator on that host would.
    archive = tmp_path / "diags.tar.gz"
    r = subprocess.run(host.exec_argv([FELIXCTL, "--etcd-endpoints", etcd.unix_endpoint,
                                       "--etcd-prefix", prefix, "diags", "--host", H,
                                       "--file", str(archive)]),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with tarfile.open(archive) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode()
                 for m in tar.getmembers()}
    assert "10.65.0.1 dev cali1" in files["kernel/ip-route.txt"]
    assert "default via" in files["kernel/ip-route.txt"]
    for name in ("iptables-legacy-save", "iptables-save", "ipset-save", "ip6-route"):
        assert f"kernel/{name}.txt" in files
    assert "ok     iptables-legacy-save -c" in files["SUMMARY.txt"]
    keys = json.loads(files["datastore.json"])
    assert f"{prefix}/v1/host/{H}/workload/cli/w1/endpoint/eth0" in keys
    assert f"{prefix}/v1/policy/profile/web/rules" in keys
    assert f"{prefix}/felix/v1/host/{H}/status" in keys
    assert json.loads(files["status.json"])["agent"]["state"] == "alive"
    assert "FAILED datastore" not in files["SUMMARY.txt"]

    agent.stop()
    assert "Agent:  down (no heartbeat" in ctl("node", "status", "--host", H)


def test_bgp_peer_table(ctl, client, prefix):
    client.put(f"{prefix}/felix/v1/host/h1/status", json.dumps(
        {"time": _stamp(2), "uptime": 3725.0, "first_update": True, "version": "0.1.0",
         "ready": True}))
    peers = {"10.0.0.254": {"peer_type": "tor", "state": "Established", "since": _stamp(90),
                            "received": 1, "accepted": 1, "sent": 3},
             "10.0.1.254": {"peer_type": "route-reflector", "state": "Active",
                            "info": "Connection refused"},
             "10.0.2.9": {"peer_type": "node-mesh", "state": "Idle"}}
    for ip, st in peers.items():
        client.put(f"{prefix}/felix/v1/host/h1/bgp/peer/{ip}", json.dumps(st))
    out = ctl("node", "status", "--host", "h1")
    assert "Agent:    alive (heartbeat 2s ago)" in out or "heartbeat 3s ago" in out
    assert "Uptime:   1h2m5s" in out
    lines = out.split("BGP peers:\n")[1].splitlines()
    assert lines[0].split() == ["PEER", "ADDRESS", "PEER", "TYPE", "STATE", "SINCE", "INFO"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert "ToR" in rows["10.0.0.254"] and "Established" in rows["10.0.0.254"]
    assert "(1m30s)" in rows["10.0.0.254"] or "(1m31s)" in rows["10.0.0.254"]
    assert "1 received, 1 accepted, 3 sent" in rows["10.0.0.254"]
    assert "route reflector" in rows["10.0.1.254"] and "Connection refused" in rows["10.0.1.254"]
    assert "node-mesh" in rows["10.0.2.9"]
    data = ctl.json("node", "status", "--host", "h1")
    assert [p["peer"] for p in data["bgp_peers"]] == ["10.0.0.254", "10.0.1.254", "10.0.2.9"]
    # A heartbeat older than the reporting TTL: the agent is stuck.
    client.put(f"{prefix}/felix/v1/host/h1/status", json.dumps(
        {"time": _stamp(3600), "uptime": 1.0}))
    assert "Agent:    stale (heartbeat 1h0m0s ago)" in ctl("node", "status", "--host", "h1")
    assert "stale" in ctl("node", "list")


def test_bgp_settings(ctl):
    p = ctl.prefix
    get = lambda key: ctl.client.get(f"{p}/bgp/v1/{key}")    # noqa: E731
    assert ctl("bgp", "as").strip() == "64512 (default)"
    ctl("bgp", "as", "65000")
    ctl("bgp", "as", "64513", "--host", "h1")
    assert get("global/as_num") == b"65000" and get("host/h1/as_num") == b"64513"
    assert ctl("bgp", "as", "--host", "h2").strip() == "65000 (global)"
    ctl("bgp", "mode", "route-reflector", "--host", "h1")
    ctl("bgp", "mode", "node-mesh")
    assert get("host/h1/mode") == b"route-reflector" and get("global/mode") == b"node-mesh"
    ctl("bgp", "mesh", "off")
    assert json.loads(get("global/node_mesh")) == {"enabled": False}
    ctl("bgp", "address", "10.0.0.1", "--host", "h1")
    ctl("bgp", "address", "fd00::1", "--host", "h1")
    assert get("host/h1/ip_addr_v4") == b"10.0.0.1" and get("host/h1/ip_addr_v6") == b"fd00::1"
    ctl("bgp", "cluster-id", "1.0.0.1", "--host", "h1")
    assert get("host/h1/rr_cluster_id") == b"1.0.0.1"
    ctl("bgp", "peer", "add", "10.0.0.254", "--as", "65101", "--host", "h1")
    ctl("bgp", "peer", "add", "10.0.9.1", "--as", "65009", "--password", "pw", "--port", "1179")
    ctl("bgp", "rr", "add", "10.0.0.100", "--cluster-id", "1.0.0.1")
    assert json.loads(get("host/h1/peer_v4/10.0.0.254")) == {"ip": "10.0.0.254",
                                                             "as_num": 65101}
    assert json.loads(get("rr_v4/10.0.0.100"))["cluster_id"] == "1.0.0.1"
    rows = [line.split() for line in ctl("bgp", "peer", "list").splitlines()[2:]]
    assert ["h1", "10.0.0.254", "65101", "-", "-", "ok"] in rows
    assert ["global", "10.0.9.1", "65009", "1179", "set", "ok"] in rows
    assert len(ctl.json("bgp", "peer", "list", "--host", "h2")) == 1     # only the global one
    assert ctl("bgp", "rr", "list").splitlines()[2].split() == ["10.0.0.100", "1.0.0.1", "ok"]
    shown = ctl("bgp", "show", "--host", "h1")
    assert "h1 mode:" in shown and "route-reflector" in shown and "global as_num:" in shown

    for args, message in [
        (["as", "70000000000"], "out of range"),
        (["as", "abc", "--host", "h1"], "is not an AS number"),
        (["mode", "ring"], "'ring' is not one of"),
        (["peer", "add", "10.0.0.9"], "Missing option '--as'. (see `cli bgp peer add --help`)"),
        (["peer", "add", "10.0.0.300", "--as", "65101"], "not an IP address"),
        (["peer", "add", "10.0.0.9", "--as", "0"], "field 'as_num'"),
        (["peer", "add", "10.0.0.9", "--as", "65001", "--password", "a'b"], "password"),
        (["peer", "remove", "10.0.0.77"], "does not exist"),
        (["rr", "add", "10.0.0.101", "--cluster-id", "cluster-a"], "cluster_id"),
        (["rr", "remove", "10.0.0.77"], "does not exist"),
        (["address", "nonsense", "--host", "h1"], "not an IP address"),
        (["cluster-id", "x", "--host", "h1"], "not a valid IP"),
        (["mode", "--clear", "--host", "h9"], "no host h9 mode is set"),
    ]:
        assert message in ctl.fails("bgp", *args), args

    ctl("bgp", "mode", "--clear", "--host", "h1")
    assert get("host/h1/mode") is None
    ctl("bgp", "peer", "remove", "10.0.0.254", "--host", "h1")
    ctl("bgp", "rr", "remove", "10.0.0.100")
    assert get("host/h1/peer_v4/10.0.0.254") is None and get("rr_v4/10.0.0.100") is None


def _felixctl(*args, state_dir, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FELIX_")}
    env["FELIX_STATE_DIR"] = str(state_dir)
    r = subprocess.run([FELIXCTL, *args], capture_output=True, text=True, env=env, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_datastore_start_status_stop(tmp_path, prefix):
    state, data = tmp_path / "state", tmp_path / "etcd"
    r = _felixctl("endpoint", "list", state_dir=state, check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "felixctl datastore start" in r.stderr
    port = free_port()
    try:
        out = _felixctl("datastore", "start", "--data-dir", str(data), "--port", str(port),
                        state_dir=state).stdout
        assert f"started at http://127.0.0.1:{port}" in out
        assert "already runs" in _felixctl("datastore", "start", "--data-dir", str(data),
                                           "--port", str(port), state_dir=state).stdout
        status = json.loads(_felixctl("datastore", "status", "-o", "json",
                                      state_dir=state).stdout)
        assert status["healthy"] is True and status["endpoint"].endswith(f":{port}")
        # Every command now finds it without --etcd-endpoints.
        _felixctl("--etcd-prefix", prefix, "pool", "add", "10.80.0.0/16", state_dir=state)
        assert "10.80.0.0/16" in _felixctl("--etcd-prefix", prefix, "pool", "list",
                                           state_dir=state).stdout
    finally:
        out = _felixctl("datastore", "stop", state_dir=state).stdout
    assert "stopped" in out
    pid = status["pid"]
    assert not os.path.exists(f"/proc/{pid}") or \
        open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] == "Z"
    r = _felixctl("datastore", "status", state_dir=state, check=False)
    assert r.returncode == 1 and "no embedded etcd is running" in r.stderr
    assert os.path.isdir(data / "data")           # the data stays for the next start


def test_unreachable_etcd_names_the_endpoint(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    r = _felixctl("--etcd-endpoints", url, "profile", "add", "web", state_dir=tmp_path,
                  check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("Error: ")
    assert f"etcd at {url} is unreachable" in r.stderr
    assert "felixctl datastore start" in r.stderr


def test_version(ctl):
    assert "felixctl:  0.1.0" in ctl("version")
    assert ctl.json("version")["felixctl"] == "0.1.0"


def test_bgp_render_gives_configs_bird_accepts(ctl, tmp_path):
    ctl("pool", "add", "10.65.0.0/16")
    ctl("bgp", "address", "10.1.0.10", "--host", "h1")
    ctl("bgp", "peer", "add", "10.1.0.1", "--as", "65101", "--host", "h1")
    ctl("bgp", "cluster-id", "1.0.0.1", "--host", "h1")
    ctl("bgp", "rr", "add", "10.0.0.100", "--cluster-id", "1.0.0.1")
    ctl("config", "set", "BgpHoldTimeSecs", "30")
    tor = ctl("bgp", "render", "tor", "--name", "tor1", "--router-id", "10.1.0.1", "--as",
              "65101", "--address", "10.1.0.1/24", "--uplink", "10.9.0.1:65000")
    assert "neighbor 10.1.0.10 as 64512" in tor and "10.65.0.0/16+" in tor
    assert "hold time 30" in tor
    core = tmp_path / "core.conf"
    ctl("bgp", "render", "core", "--name", "core", "--router-id", "10.9.0.1", "--as", "65000",
        "--tor", "10.9.0.2:65101", "--file", str(core))
    rr = ctl("bgp", "render", "rr", "10.0.0.100")
    assert "neighbor 10.1.0.10" in rr
    for name, text in (("tor.conf", tor), ("core.conf", core.read_text()), ("rr.conf", rr)):
        bird_parses(tmp_path, text, name)
    assert "no route reflector 10.0.0.101" in ctl.fails("bgp", "render", "rr", "10.0.0.101")
    assert "is not IP:AS" in ctl.fails("bgp", "render", "core", "--name", "c", "--router-id",
                                       "10.9.0.1", "--as", "65000", "--tor", "10.9.0.2")


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_etcd(tmp_path):
    """An etcd that only speaks TLS and wants a client certificate signed by our CA."""
    d = tmp_path
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"),
                      ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext",
                 "-out", f"{name}.crt", cwd=d)
    from felix_py.datastore.embedded import etcd_binary
    port, peer = free_port(), free_port()
    url = f"https://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [etcd_binary(), "--data-dir", str(d / "data"), "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"default=http://127.0.0.1:{peer}",
         "--cert-file", str(d / "server.crt"), "--key-file", str(d / "server.key"),
         "--trusted-ca-file", str(d / "ca.crt"), "--client-cert-auth", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield url, d
    finally:
        proc.terminate()
        proc.wait(10)


def test_tls_client_certificates(tls_etcd, prefix):
    url, d = tls_etcd
    tls = ["--etcd-ca-file", str(d / "ca.crt"), "--etcd-cert-file", str(d / "client.crt"),
           "--etcd-key-file", str(d / "client.key")]
    args = ["--etcd-endpoints", url, "--etcd-prefix", prefix]
    wait_for(lambda: _felixctl(*args, *tls, "pool", "add", "10.90.0.0/16", state_dir=d,
                               check=False).returncode == 0, timeout=20, what="TLS etcd")
    assert "10.90.0.0/16" in _felixctl(*args, *tls, "pool", "list", state_dir=d).stdout
    # Without the client certificate etcd refuses the connection: one line naming it.
    r = _felixctl(*args, "--etcd-ca-file", str(d / "ca.crt"), "pool", "list", state_dir=d,
                  check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and url in r.stderr
    r = _felixctl(*args, "--etcd-ca-file", str(d / "missing.crt"), "pool", "list",
                  state_dir=d, check=False)
    assert r.returncode == 1 and "cannot read TLS file" in r.stderr
