"""felixctl bgp render's neighbours on the command line alone.

Neighbours as IP:AS[:PASSWORD] and [IPV6]:AS[:PASSWORD], router ids and reflector
addresses, refused with the option, the value and what to write instead, before any
datastore is opened.  Needs neither root nor etcd; the rendering against a real etcd is
in tests/fv/test_ctl_bgp_render.py.
"""

import pytest
from click.testing import CliRunner

from felix_py.ctl.bgp import _neighbors, parse_neighbor
from felix_py.ctl.common import CtlError
from felix_py.ctl.main import cli
from felix_py.datastore.embedded import free_port


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
