"""felixctl bgp render with IPv6 neighbours and reflectors.

First the command line alone: neighbours as IP:AS[:PASSWORD] and [IPV6]:AS[:PASSWORD],
router ids and reflector addresses, refused with the option, the value and what to write
instead, before any datastore is opened.  Then against a real etcd: a dual-stack ToR,
core and route reflector rendered from IPv6 peers, addresses, reflectors and pools that
felixctl itself stored, checked by BIRD's own parser and session by session.

(One file: a unit test module of the same name would collide with this one in pytest's
default import mode; the first part needs neither root nor etcd.)
"""

import subprocess

import pytest
from click.testing import CliRunner
from ctlkit import Ctl

from bgp import fabric
from felix_py.ctl.bgp import _neighbors, parse_neighbor
from felix_py.ctl.common import CtlError
from felix_py.ctl.main import cli
from felix_py.datastore.embedded import free_port
from felix_py.datastore.keys import KeyLayout


def old_parse(item):
    """The IPv4 parsing felixctl had before IPv6 neighbours, for its valid inputs."""
    parts = item.split(":", 2)
    return (parts[0], int(parts[1]), *parts[2:])


@pytest.mark.parametrize("item", [
    "10.0.0.1:65000", "10.9.0.2:65101:pw", "10.0.0.1:4294967295:pass word#1",
    "10.0.0.1:1:a:b::c", "10.0.0.1:65000:[x]", "192.0.2.1:64512:]:",
])
def test_ipv4_neighbours_parse_as_before(item):
    assert parse_neighbor(item, "--uplink") == old_parse(item)


@pytest.mark.parametrize("item, parsed", [
    ("[fd00::1]:65000", ("fd00::1", 65000)),
    ("[fd00:0:1::1]:65000:up6", ("fd00:0:1::1", 65000, "up6")),
    ("[FD00:0:0::0:2]:4294967295", ("fd00::2", 4294967295)),      # written canonically
    ("[2001:db8::1]:1:p:w:", ("2001:db8::1", 1, "p:w:")),          # ':' in the password
    ("[2001:db8::1]:65000::", ("2001:db8::1", 65000, ":")),
    ("[2001:db8::1]:65000:a]b[c", ("2001:db8::1", 65000, "a]b[c")),  # brackets in it
    ("[::1]:65000", ("::1", 65000)),
])
def test_ipv6_neighbours_in_brackets(item, parsed):
    assert parse_neighbor(item, "--tor") == parsed


def test_no_password_gives_a_pair_the_renderer_takes_as_no_password():
    assert len(parse_neighbor("10.0.0.1:65000", "--tor")) == 2
    assert len(parse_neighbor("[fd00::1]:65000", "--tor")) == 2


# value, fragments of the message (after "--uplink 'value'" or the masked value)
BAD = [
    # bare IPv6: refused with the bracket form it should have been written in
    ("fd00::1:65000", ["an IPv6 address goes in brackets", "write [fd00::1]:65000"]),
    ("fd00::1:65000:pw", ["goes in brackets", "write [fd00::1]:65000:PASSWORD"]),
    ("fd00::1", ["goes in brackets", "write [fd00::1]:AS"]),
    ("fd00::1:100:200", ["goes in brackets",
                         "write [fd00::1]:100:PASSWORD or [fd00::1:100]:200 or "
                         "[fd00::1:100:200]:AS"]),
    ("fd00::zz:65000", ["goes in brackets", "e.g. [fd00::1]:65000"]),
    ("2001:db8:0:0:0:0:0:1:65000", ["goes in brackets", "write [2001:db8:0:0:0:0:0:1]:65000"]),
    ("fd00::1]:65000", ["a ']' closes an address no '[' opens", "write [fd00::1]:AS"]),
    # addresses
    ("", ["is empty", "e.g. 10.0.0.1:65000 or [fd00::1]:65000"]),
    (":65000", ["no address before the ':'", "e.g. 10.0.0.1:65000"]),
    ("10.0.0.300:65000", ["'10.0.0.300' is not an IPv4 address", "write IP:AS[:PASSWORD]"]),
    ("tor-1:65000", ["'tor-1' is not an IPv4 address (names are not looked up)"]),
    ("[]:65000", ["no address between the brackets", "e.g. [fd00::1]:65000"]),
    ("[fd00::1:65000", ["no ']' closes the IPv6 address", "e.g. [fd00::1]:65000"]),
    ("[fd00::zz]:65000", ["'fd00::zz' is not an IPv6 address", "e.g. [fd00::1]:65000"]),
    ("[10.0.0.1]:65000", ["brackets are for IPv6 addresses only", "write 10.0.0.1:65000"]),
    ("[::ffff:10.0.0.1]:65000", ["IPv4-mapped", "write the IPv4 neighbour as 10.0.0.1:65000"]),
    ("[fd00::1%eth0]:65000", ["has a zone index", "global or ULA address"]),
    ("[fe80::1]:65000", ["fe80::1 is link-local", "use a global (or ULA) address"]),
    ("[ff02::1]:65000", ["ff02::1 cannot be a BGP neighbour"]),
    ("224.0.0.1:65000", ["224.0.0.1 cannot be a BGP neighbour"]),
    ("0.0.0.0:65000", ["0.0.0.0 cannot be a BGP neighbour"]),
    # the AS
    ("10.9.0.2", ["is not IP:AS[:PASSWORD]", "no AS after the address",
                  "write e.g. 10.9.0.2:65000"]),
    ("[fd00::1]", ["is not [IPV6]:AS[:PASSWORD]", "no AS after the address",
                   "write e.g. [fd00::1]:65000"]),
    ("[fd00::1]65000", ["'6' follows ']' where ':AS' belongs", "write [fd00::1]:AS"]),
    ("10.0.0.1:", ["the AS is empty", "e.g. 10.0.0.1:65000"]),
    ("[fd00::1]:", ["the AS is empty", "e.g. [fd00::1]:65000"]),
    ("[fd00::1]:abc", ["AS 'abc' is not a number", "plain number (1-4294967295)"]),
    ("10.0.0.1:-1", ["AS '-1' is not a number"]),
    ("10.0.0.1:\u00b2", ["AS '\u00b2' is not a number"]),      # a digit to isdigit()
    ("10.0.0.1:1.10", ["AS '1.10' is asdot", "the plain number 65546"]),
    ("10.0.0.1:0", ["AS 0 is out of range 1-4294967295", "e.g. 10.0.0.1:65000"]),
    ("[fd00::1]:4294967296", ["AS 4294967296 is out of range", "e.g. [fd00::1]:65000"]),
    # the password
    ("10.0.0.1:65000:", ["the password after the AS is empty",
                         "write 10.0.0.1:65000 for a session without one"]),
    ("[fd00::1]:65000:", ["the password after the AS is empty",
                          "write [fd00::1]:65000 for a session without one"]),
]


@pytest.mark.parametrize("item, fragments", BAD)
def test_bad_neighbours_name_the_option_the_value_and_the_fix(item, fragments):
    with pytest.raises(CtlError) as e:
        parse_neighbor(item, "--uplink")
    message = e.value.message
    assert message.startswith(f"--uplink {item!r}"), message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("item, shown, fragment", [
    ("10.0.0.1:abc:s3cr:et", "'10.0.0.1:abc:****'", "AS 'abc' is not a number"),
    ("[fd00::1]:0:s3cr:et", "'[fd00::1]:0:****'", "AS 0 is out of range"),
    ("10.0.0.1::s3cr:et", "'10.0.0.1::****'", "the AS is empty"),
    ("[10.0.0.1]:65000:s3cr:et", "'[10.0.0.1]:65000:****'", "write 10.0.0.1:65000:PASSWORD"),
    ('10.0.0.1:65000:s3cr"et', "'10.0.0.1:65000:****'", 'printable ASCII without "'),
    ("[fd00::1]:65000:s3cr\u00e9t", "'[fd00::1]:65000:****'", "printable ASCII"),
    ("[fe80::1]:65000:s3cr:et", "'[fe80::1]:65000:****'", "link-local"),
])
def test_a_password_it_can_tell_is_never_shown(item, shown, fragment):
    with pytest.raises(CtlError) as e:
        parse_neighbor(item, "--tor")
    assert e.value.message.startswith(f"--tor {shown}") and fragment in e.value.message
    assert "s3cr" not in e.value.message


def test_each_neighbour_once():
    assert _neighbors(["10.0.0.1:65000", "[fd00::1]:65000:pw"], "--tor") == \
        [("10.0.0.1", 65000), ("fd00::1", 65000, "pw")]
    with pytest.raises(CtlError, match=r"--tor: neighbour fd00::1 is given twice"):
        _neighbors(["[fd00::1]:65000", "[FD00:0::1]:65001"], "--tor")


# -- through the command line, without a datastore: bad input is refused before one is
# -- opened (the endpoint below has nobody listening), good input gets as far as opening it.

@pytest.fixture
def run(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"

    def run(*args):
        return CliRunner().invoke(cli, ["--etcd-endpoints", url, "bgp", "render", *args])
    run.url = url
    return run


TOR = ["tor", "--name", "t", "--router-id", "10.1.0.1", "--as", "65101",
       "--address", "fd10:1::1/64"]
CORE = ["core", "--name", "c", "--router-id", "10.9.0.1", "--as", "65000"]


def refused(result):
    assert result.exit_code == 1 and result.stdout == "", result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (TOR + ["--uplink", "fd00::9:65000"], "--uplink 'fd00::9:65000' is not IP:AS[:PASSWORD] or "
                                          "[IPV6]:AS[:PASSWORD]: an IPv6 address goes in "
                                          "brackets"),
    (TOR + ["--uplink", "[fd00::9]:0"], "--uplink '[fd00::9]:0' is not [IPV6]:AS[:PASSWORD]: "
                                        "AS 0 is out of range"),
    (CORE + ["--tor", "[fd00::2]"], "--tor '[fd00::2]' is not [IPV6]:AS[:PASSWORD]: no AS"),
    (CORE + ["--tor", "10.9.0.2:65101", "--tor", "10.9.0.2:65102"], "is given twice"),
    (["tor", "--name", "t", "--router-id", "fd10:1::1", "--as", "65101", "--address",
      "fd10:1::1/64"], "--router-id 'fd10:1::1' is not an IPv4 address"),
    (["core", "--name", "c", "--router-id", "core-1", "--as", "65000", "--tor",
      "10.9.0.2:65101"], "--router-id 'core-1' is not an IPv4 address"),
    (["rr", "fd00:3::1"], "the IPv6-only route reflector fd00:3::1 needs --router-id"),
    (["rr", "fd00:3::1", "--router-id", "fd00:3::1"], "--router-id 'fd00:3::1' is not an IPv4"),
    (["rr", "fd00:3::1", "--ipv6", "fd00:3::2"], "the reflector's address fd00:3::1 is IPv6 "
                                                 "already"),
    (["rr", "10.3.0.1", "--ipv6", "10.3.0.2"], "--ipv6 '10.3.0.2' is not an IPv6 address"),
    (["rr", "rr-1"], "route reflector address 'rr-1' is not an IP address"),
])
def test_bad_input_is_refused_before_the_datastore_is_opened(run, tmp_path, args, message):
    out = tmp_path / "bird.conf"
    error = refused(run(*args, "--file", str(out)))
    assert message in error and "etcd" not in error
    assert not out.exists()


@pytest.mark.parametrize("args", [
    TOR + ["--uplink", "[fd00::9]:65000:a:b", "--uplink", "10.9.0.1:65000"],
    CORE + ["--tor", "[fd00::2]:65101", "--tor", "10.9.0.2:65101:pw"],
    ["rr", "fd00:3::1", "--router-id", "10.3.0.1"],
    ["rr", "10.3.0.1", "--ipv6", "fd00:3::1"],
])
def test_good_input_goes_on_to_the_datastore(run, args):
    """The same commands with valid input pass the checks above and fail only for want of
    the datastore, so that the refusals above are about the input."""
    assert f"etcd at {run.url} is unreachable" in refused(run(*args))


# == against a real etcd ================================================================

@pytest.fixture
def ctl(client, etcd, prefix):
    yield Ctl(client, etcd.endpoint, prefix)
    client.delete_prefix(prefix + "/")


@pytest.fixture
def fabric_ctl(ctl):
    """Rack 1 (ToR 10.1.0.1 and fd10:1::1, AS 65101): h1 dual-stack with a session of its
    own in each family (password "six" over IPv6); h2 peers with the ToR's IPv6 address
    without an ip_addr_v6 of its own (accepted from the link's prefix).  Both are clients
    of cluster 1.0.0.1, whose reflectors are 10.3.0.1 and fd00:3::1 (one dual-stack BIRD)
    and fd00:3::2 (IPv6 only)."""
    ctl("pool", "add", "10.65.0.0/16")
    ctl("pool", "add", "fd00:10:65::/48")
    ctl("config", "set", "BgpHoldTimeSecs", "30")
    for host, v4 in (("h1", "10.1.0.11"), ("h2", "10.1.0.12")):
        ctl("bgp", "address", v4, "--host", host)
        ctl("bgp", "peer", "add", "10.1.0.1", "--as", "65101", "--host", host)
        ctl("bgp", "cluster-id", "1.0.0.1", "--host", host)
    ctl("bgp", "address", "fd10:1::11", "--host", "h1")
    ctl("bgp", "peer", "add", "fd10:1::1", "--as", "65101", "--host", "h1", "--password", "six")
    ctl("bgp", "peer", "add", "fd10:1::1", "--as", "65101", "--host", "h2")
    for rr in ("10.3.0.1", "fd00:3::1", "fd00:3::2"):
        ctl("bgp", "rr", "add", rr, "--cluster-id", "1.0.0.1")
    return ctl


def bird_parses(tmp_path, text, name="bird.conf"):
    path = tmp_path / name
    path.write_text(text)
    r = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, f"BIRD refuses {name}: {r.stderr}\n{text}"


def block(text, head):
    """The body of the block that starts with the line ``head {`` (without its braces)."""
    start = text.index(head + " {\n") + len(head) + 3
    depth, i = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start:i - 1]


def sessions(text):
    """{BGP protocol: (its body, its template's included; its channels)}."""
    out = {}
    for line in text.splitlines():
        if line.startswith("protocol bgp ") and line.endswith(" {"):
            head = line[:-2]
            body = block(text, head)
            if " from " in head:
                body += block(text, f"template bgp {head.split(' from ')[1]}")
            out[head.split()[2]] = (body, [c for c in ("ipv4", "ipv6") if f"    {c} {{" in body])
    return out


def stored(ctl):
    return fabric.load(ctl.client, KeyLayout(ctl.prefix))


TOR = ["bgp", "render", "tor", "--name", "tor1", "--router-id", "10.1.0.1", "--as", "65101",
       "--address", "10.1.0.1/24", "--address", "fd10:1::1/64"]


def test_dual_stack_tor_from_the_command_line(fabric_ctl, tmp_path):
    ctl = fabric_ctl
    text = ctl(*TOR, "--uplink", "10.0.1.1:65000", "--uplink", "[fd00:0:1::1]:65000:up:six")
    bird_parses(tmp_path, text)
    s = sessions(text)
    assert list(s) == ["host_h1", "host_h2", "uplink_10_0_1_1", "host6_h1",
                       "rack6_fd10_1___64", "uplink_fd00_0_1__1"]
    assert {p: ch for p, (_, ch) in s.items()} == {
        "host_h1": ["ipv4"], "host_h2": ["ipv4"], "uplink_10_0_1_1": ["ipv4"],
        "host6_h1": ["ipv6"], "rack6_fd10_1___64": ["ipv6"], "uplink_fd00_0_1__1": ["ipv6"]}
    # The IPv6 uplink: its address out of the brackets, the password with its ':'.
    up6 = s["uplink_fd00_0_1__1"][0]
    assert "neighbor fd00:0:1::1 as 65000;" in up6 and 'password "up:six";' in up6
    assert "import filter from_uplinks6;" in up6 and "export filter to_uplinks6;" in up6
    assert "neighbor 10.0.1.1 as 65000;" in s["uplink_10_0_1_1"][0]
    assert "password" not in s["uplink_10_0_1_1"][0]
    # The rack, from the datastore: h1's own IPv6 session with its peer_v6 password, h2
    # (no ip_addr_v6) from the link's prefix; IPv6 pool prefixes up, ::/0 down.
    assert "neighbor fd10:1::11 as 64512;" in s["host6_h1"][0]
    assert 'password "six";' in s["host6_h1"][0]
    assert "neighbor range fd10:1::/64 as 64512;" in s["rack6_fd10_1___64"][0]
    assert "define WORKLOAD_NETS6 = [ fd00:10:65::/48+ ];" in text
    assert "    if net = ::/0 then accept;\n    reject;\n" == block(text, "filter to_hosts6")
    assert "hold time 30;" in s["host6_h1"][0]
    # Exactly what the renderer makes of the same neighbours.
    settings, pools = stored(ctl)
    assert text == fabric.render_tor(
        settings, pools, name="tor1", router_id="10.1.0.1", local_as=65101,
        addresses=["10.1.0.1/24", "fd10:1::1/64"],
        uplinks=[("10.0.1.1", 65000), ("fd00:0:1::1", 65000, "up:six")], hold_time=30)


def test_ipv4_neighbours_render_as_before(fabric_ctl):
    """IP:AS:PASSWORD keeps its meaning: the password is everything after the AS."""
    ctl = fabric_ctl
    text = ctl("bgp", "render", "tor", "--name", "tor1", "--router-id", "10.1.0.1", "--as",
               "65101", "--address", "10.1.0.1/24", "--uplink", "10.0.1.1:65000:pa:ss")
    assert 'password "pa:ss";' in sessions(text)["uplink_10_0_1_1"][0]
    assert "ipv6" not in text
    settings, pools = stored(ctl)
    assert text == fabric.render_tor(settings, pools, name="tor1", router_id="10.1.0.1",
                                     local_as=65101, addresses=["10.1.0.1/24"],
                                     uplinks=[("10.0.1.1", 65000, "pa:ss")], hold_time=30)


def test_dual_stack_core_from_the_command_line(fabric_ctl, tmp_path):
    ctl = fabric_ctl
    path = tmp_path / "core.conf"
    assert f"Wrote {path}" in ctl("bgp", "render", "core", "--name", "core", "--router-id",
                                  "10.0.0.1", "--as", "65000", "--tor", "10.0.1.2:65101",
                                  "--tor", "[FD00:0:1:0::2]:65101:up:six", "--file", str(path))
    text = path.read_text()
    bird_parses(tmp_path, text, "core-checked.conf")
    s = sessions(text)
    assert {p: ch for p, (_, ch) in s.items()} == {"tor_10_0_1_2": ["ipv4"],
                                                   "tor_fd00_0_1__2": ["ipv6"]}
    tor6 = s["tor_fd00_0_1__2"][0]
    assert "neighbor fd00:0:1::2 as 65101;" in tor6 and 'password "up:six";' in tor6
    assert "export filter to_tors6;" in tor6 and "hold time 30;" in tor6
    assert "protocol static default_route6 {\n    ipv6;\n    route ::/0 blackhole;\n}" in text


def test_dual_stack_and_ipv6_only_reflectors(fabric_ctl, tmp_path):
    ctl = fabric_ctl
    dual = ctl("bgp", "render", "rr", "10.3.0.1", "--ipv6", "fd00:3::1")
    bird_parses(tmp_path, dual)
    s = sessions(dual)
    assert {p: ch for p, (_, ch) in s.items()} == {
        "host_h1": ["ipv4"], "host_h2": ["ipv4"], "host6_h1": ["ipv6"],
        "rr_fd00_3__2": ["ipv6"]}
    assert "neighbor fd10:1::11 as 64512;" in s["host6_h1"][0]
    assert "rr client;" in s["host6_h1"][0] and "rr cluster id 1.0.0.1;" in s["host6_h1"][0]
    assert "neighbor fd00:3::2 as 64512;" in s["rr_fd00_3__2"][0]
    assert "router id 10.3.0.1;" in dual
    assert "without ip_addr_v6, so without an IPv6 session here:\n# h2\n" in dual
    assert "router id 10.3.0.9;" in ctl("bgp", "render", "rr", "10.3.0.1", "--ipv6",
                                        "fd00:3::1", "--router-id", "10.3.0.9")
    only6 = ctl("bgp", "render", "rr", "fd00:3::2", "--router-id", "10.3.0.2")
    bird_parses(tmp_path, only6)
    s = sessions(only6)
    assert {p: ch for p, (_, ch) in s.items()} == {"host6_h1": ["ipv6"],
                                                   "rr_fd00_3__1": ["ipv6"]}
    assert "router id 10.3.0.2;" in only6 and "ipv4" not in only6


def test_missing_router_id_and_reflector_keys(fabric_ctl, tmp_path):
    ctl = fabric_ctl
    out = tmp_path / "rr.conf"
    err = ctl.fails("bgp", "render", "rr", "fd00:3::2", "--file", str(out))
    assert "the IPv6-only route reflector fd00:3::2 needs --router-id" in err
    assert "e.g. --router-id 10.255.0.1" in err
    # The renderer's own refusal (a reflector key that is not there) comes out the same way.
    err = ctl.fails("bgp", "render", "rr", "10.3.0.1", "--ipv6", "fd00:3::9", "--file",
                    str(out))
    assert "no route reflector fd00:3::9 in the datastore" in err
    assert "/calico/bgp/v1/rr_v6/fd00:3::9" in err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--uplink", "fd00:0:1::1:65000"], "--uplink 'fd00:0:1::1:65000' is not IP:AS[:PASSWORD] "
                                        "or [IPV6]:AS[:PASSWORD]: an IPv6 address goes in "
                                        "brackets (its ':' would be read as separators); "
                                        "write [fd00:0:1::1]:65000"),
    (["--uplink", "[fd00:0:1::1]:70000000000"], "--uplink '[fd00:0:1::1]:70000000000' is not "
                                                "[IPV6]:AS[:PASSWORD]: AS 70000000000 is out "
                                                "of range 1-4294967295"),
    (["--uplink", "[fd00:0:1::1]:65000:"], "the password after the AS is empty; write "
                                           "[fd00:0:1::1]:65000 for a session without one"),
    (["--uplink", "[fd00:0:1::zz]:65000"], "'fd00:0:1::zz' is not an IPv6 address"),
    (["--uplink", "[fe80::1]:65000:secret"], "--uplink '[fe80::1]:65000:****': fe80::1 is "
                                             "link-local"),
])
def test_bad_neighbours_render_nothing(fabric_ctl, tmp_path, args, message):
    out = tmp_path / "tor.conf"
    err = fabric_ctl.fails(*TOR, "--uplink", "10.0.1.1:65000", *args, "--file", str(out))
    assert message in err and "secret" not in err
    assert not out.exists()
