"""felixctl's flag parsing, file loading and status arithmetic, without a datastore."""

import json

import pytest

from felix_py import model
from felix_py.ctl import common, output, resources, status
from felix_py.ctl.common import CtlError


def test_parse_ports():
    assert common.parse_ports("80, 443,8000:8080", "--dst-ports") == [80, 443, "8000:8080"]
    assert common.parse_ports(None, "--dst-ports") is None
    # Range checks are the model's, so that every path reports them alike.
    assert common.parse_ports("70000", "--dst-ports") == [70000]
    for bad in ("http", "80-90", ",", "1:2:3"):
        with pytest.raises(CtlError, match="--dst-ports"):
            common.parse_ports(bad, "--dst-ports")


def test_split_nets():
    assert common.split_nets(["10.0.0.1", "fd00::1", "10.0.0.2/32", "fd00::2/128"]) == (
        ["10.0.0.1/32", "10.0.0.2/32"], ["fd00::1/128", "fd00::2/128"])
    with pytest.raises(CtlError, match="'10.0.0.256' is not an IP address"):
        common.split_nets(["10.0.0.256"])
    with pytest.raises(CtlError, match="single address"):
        common.split_nets(["10.0.0.0/24"])


def test_parse_labels():
    assert common.parse_labels(["a=b", "c=", "k=v=w"]) == {"a": "b", "c": "", "k": "v=w"}
    for bad in ("novalue", "=x"):
        with pytest.raises(CtlError, match="is not KEY=VALUE"):
            common.parse_labels([bad])


def test_cells_and_tables():
    assert [output.cell(v) for v in (None, "", [], True, False, ["a", "b"], {"k": "v"}, 3)] == \
        ["-", "-", "-", "yes", "no", "a,b", "k=v", "3"]
    text = output.table(["A", "B"], [["x", None], ["00123", [1, 2]]])
    assert text.splitlines()[0].split() == ["A", "B"]
    assert text.splitlines()[3].split() == ["00123", "1,2"]     # no number reformatting


def test_duration_and_agent_state():
    assert [status.duration(s) for s in (0, 59, 90, 3600, 3725, 90061)] == \
        ["0s", "59s", "1m30s", "1h0m0s", "1h2m5s", "1d1h1m1s"]
    assert status.agent_state(None, 20)["state"] == "down"
    fresh = model.HostStatus(time=status.datetime.now(status.timezone.utc).isoformat(),
                             uptime=5)
    assert status.agent_state(fresh, 20)["state"] == "alive"
    old = model.HostStatus(time="2020-01-01T00:00:00Z", uptime=5)
    assert status.agent_state(old, 20)["state"] == "stale"
    garbled = model.HostStatus(time="yesterday", uptime=5)
    assert status.agent_state(garbled, 20)["state"] == "stale"


def test_load_yaml_json_and_lists(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("kind: a\n---\n\n---\n- kind: b\n- kind: c\n")
    assert resources.load(str(f)) == [{"kind": "a"}, {"kind": "b"}, {"kind": "c"}]
    f.write_text(json.dumps({"kind": "a"}))
    assert resources.load(str(f)) == [{"kind": "a"}]
    f.write_text("kind: [a\n")
    with pytest.raises(CtlError, match=r"is not valid YAML: line 2"):
        resources.load(str(f))
    f.write_bytes(b"\xff\xfe")
    with pytest.raises(CtlError, match="is not UTF-8"):
        resources.load(str(f))
