"""bgp.driver against a stand-in for ExaBGP: what it sends, and when."""

import sys
import time

from bgp.config import BgpPlan, Peer
from bgp.driver import Acknowledged, ExaBgpDriver, ProcessDown
from bgp.exabgp_config import Options, render
from felix_py.lab.netns import wait_for

# Runs the API helper of its configuration (the driver's bridge), says each neighbour is up,
# then records every command the driver sends and acknowledges it.
FAKE_EXABGP = """#!{python}
import json, os, re, subprocess, sys
conf = open(sys.argv[-1]).read()
helper = subprocess.Popen(re.search(r"run (.*);", conf).group(1).split(),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def say(line):
    helper.stdin.write(line.encode() + b"\\n")
    helper.stdin.flush()
for peer in re.findall(r"neighbor (\\S+) {{", conf):
    say(json.dumps({{"type": "state", "neighbor": {{"address": {{"local": "10.1.0.11",
                                                            "peer": peer}}, "state": "up"}}}}))
with open(os.path.join(os.path.dirname(sys.argv[-1]), "commands"), "a") as log:
    for line in helper.stdout:
        log.write(line.decode())
        log.flush()
        say("done")
"""
# The same, taking every command and never acknowledging one (hung).
SILENT_EXABGP = FAKE_EXABGP.replace('        say("done")\n', "")
assert SILENT_EXABGP != FAKE_EXABGP


def started(tmp_path, script=FAKE_EXABGP, **kw):
    """A driver running ``script`` as ExaBGP, configured with one ToR, its session up."""
    fake = tmp_path / "exabgp"
    fake.write_text(script.format(python=sys.executable))
    fake.chmod(0o755)
    events = []
    driver = ExaBgpDriver(str(tmp_path / "run"), events.append, exabgp=str(fake), **kw)
    plan = BgpPlan("h1", True, "downward-default", 64512, "10.1.0.11",
                   (Peer("10.1.0.1", 65101, "tor"),))
    text, _ = render(plan, Options(helper=driver.helper_argv))
    driver.configure(text, {"10.1.0.1": 4})
    try:
        wait_for(lambda: any(getattr(e, "state", None) == "up" for e in events), 10,
                 what="the session up")
    except BaseException:
        driver.close()
        raise
    return driver, events


def test_nothing_is_sent_before_the_announcements_are_known(tmp_path):
    driver, _ = started(tmp_path)
    commands = tmp_path / "run" / "commands"
    try:
        time.sleep(0.5)
        # A restarted agent's peers keep its routes until End-of-RIB: not before it knows
        # what to announce.
        assert not commands.exists() or commands.read_text() == ""
        driver.set_routes({"10.65.0.1/32"}, wait=10)
        wait_for(lambda: len(commands.read_text().splitlines()) == 2, 10,
                 what="announcement and End-of-RIB")
        assert commands.read_text().splitlines() == [
            "neighbor 10.1.0.1 announce attributes next-hop self nlri 10.65.0.1/32",
            "neighbor 10.1.0.1 announce eor ipv4 unicast"]
        assert driver.announced == {"10.65.0.1/32"}
        # The same again, not waiting: taken already, and nothing sent again.
        assert driver.set_routes({"10.65.0.1/32"}, wait=0) is True
        time.sleep(0.2)
        assert len(commands.read_text().splitlines()) == 2
    finally:
        driver.close()


def test_a_silent_exabgp_does_not_hold_the_caller_and_is_restarted(tmp_path):
    """It takes the announcement and never answers: set_routes gives up waiting after its
    ``wait`` (the agent's loop goes on), and the driver restarts ExaBGP after
    ``ack_timeout``."""
    driver, events = started(tmp_path, SILENT_EXABGP, ack_timeout=1.0)
    try:
        t0 = time.monotonic()
        assert driver.set_routes({"10.65.0.1/32"}, wait=0.3) is False
        assert 0.25 <= time.monotonic() - t0 < 2
        t0 = time.monotonic()       # wait=0: whether they are taken, without blocking
        assert driver.set_routes({"10.65.0.1/32"}, wait=0) is False
        assert time.monotonic() - t0 < 0.1
        wait_for(lambda: any(isinstance(e, ProcessDown) for e in events), 10,
                 what="ExaBGP restarted for not answering")
        assert "no acknowledgement from ExaBGP within 1s" in next(
            e.reason for e in events if isinstance(e, ProcessDown))
    finally:
        driver.close()


# Acknowledges each command two seconds late.
SLOW_EXABGP = FAKE_EXABGP.replace('        say("done")\n',
                                  '        time.sleep(2)\n        say("done")\n') \
    .replace("import json, os, re, subprocess, sys", "import json, os, re, subprocess, sys, time")
assert SLOW_EXABGP.count("time.sleep(2)") == 1


def test_a_late_acknowledgement_is_told_when_a_caller_gave_up_waiting(tmp_path):
    driver, events = started(tmp_path, SLOW_EXABGP)
    try:
        assert not driver.set_routes({"10.65.0.1/32"}, wait=0.2)     # gave up waiting
        assert not any(isinstance(e, Acknowledged) for e in events)
        wait_for(lambda: any(isinstance(e, Acknowledged) for e in events), 15,
                 what="the late acknowledgement told")
        assert driver.announced == {"10.65.0.1/32"}
        assert driver.set_routes({"10.65.0.1/32"}, wait=0)
        # A caller that waited long enough is told nothing more.
        n = len(events)
        assert driver.set_routes({"10.65.0.1/32", "10.65.0.2/32"}, wait=10)
        time.sleep(0.3)
        assert not any(isinstance(e, Acknowledged) for e in events[n:])
    finally:
        driver.close()
