"""bgp.api: ExaBGP's messages (recorded from real sessions) and the commands we send."""

from pathlib import Path

from bgp import api

RECORDED = [line for line in
            (Path(__file__).parent / "data" / "exabgp_api_recorded.txt").read_text().splitlines()
            if line and not line.startswith("#")]


def test_recorded_session_parses_to_typed_events():
    events = [api.parse(line) for line in RECORDED]
    assert not [e for e in events if isinstance(e, api.Unknown)]
    states = [(e.peer, e.state, e.local) for e in events if isinstance(e, api.PeerState)]
    assert states[:2] == [("10.99.0.1", "connected", "10.99.0.2"),
                          ("10.99.0.1", "up", "10.99.0.2")]
    assert [e.ok for e in events if isinstance(e, api.Ack)] == [True, False, True]
    updates = [e for e in events if isinstance(e, api.RouteUpdate)]
    assert updates[0].announced == {"10.66.1.1/32": "10.99.0.7"}
    assert updates[1].announced == {"10.66.2.1/32": "10.99.0.8", "10.66.3.0/26": "10.99.0.8"}
    withdrawal = next(u for u in updates if u.withdrawn)
    assert withdrawal.withdrawn == ("10.66.2.1/32",) and withdrawal.announced == {}
    assert api.EndOfRib("10.99.0.1", "ipv4 unicast") in events
    note = next(e for e in events if isinstance(e, api.Notification))
    assert (note.direction, note.code, note.subcode) == ("receive", 6, 2)
    down = next(e for e in events if isinstance(e, api.PeerState) and e.state == "down")
    assert down.reason == "notification received (6,2)"
    assert isinstance(events[-2], api.Shutdown)
    default = events[-1]
    assert default.announced == {"0.0.0.0/0": "10.99.0.1", "10.200.0.0/24": "10.99.0.1"}
    assert default.as_path == (65101,)


def test_compact_and_reflected_updates():
    line = ('{"type": "update", "neighbor": {"address": {"local": "10.3.0.11", "peer": "10.3.0.1"},'
            ' "message": {"update": {"attribute": {"originator-id": "10.3.0.12", '
            '"cluster-list": ["1.0.0.1"]}, "announce": {"ipv4 unicast": {"10.3.0.12": '
            '["10.66.2.1/32"]}, "l2vpn vpls": {"x": []}}}}}}')
    e = api.parse(line)
    assert e == api.RouteUpdate("10.3.0.1", {"10.66.2.1/32": "10.3.0.12"}, (), "10.3.0.12", ())


def test_garbage_is_unknown_not_an_exception():
    for line in ("", "hello", "{not json", "[1, 2]", '{"type": "update"}',
                 '{"type": "state", "neighbor": {"address": {}}}', '{"type": "weird"}'):
        assert isinstance(api.parse(line), api.Unknown), line


def test_commands_are_batched_and_addressed():
    prefixes = {f"10.65.{i // 256}.{i % 256}/32" for i in range(api.PREFIXES_PER_COMMAND + 5)}
    cmds = api.announce_commands(prefixes, ["10.1.0.1", "10.2.0.1"])
    assert len(cmds) == 2
    assert all(c.startswith("neighbor 10.1.0.1 , neighbor 10.2.0.1 announce attributes "
                            "next-hop self nlri ") for c in cmds)
    assert sum(len(c.split("nlri ")[1].split()) for c in cmds) == len(prefixes)
    assert api.withdraw_commands(["10.65.0.1/32"]) == \
        ["withdraw attributes next-hop self nlri 10.65.0.1/32"]
    assert api.announce_commands([]) == []
    assert api.eor_command("10.1.0.1") == "neighbor 10.1.0.1 announce eor ipv4 unicast"
