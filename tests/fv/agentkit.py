"""Reading an agent's HTTP endpoints from inside its namespace."""

import sys

_GET = """import sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=2)
    print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code)
"""


def http_get(ns, port: int, path: str) -> str:
    """The status code on the first line, then the body."""
    return ns.run([sys.executable, "-c", _GET, f"http://127.0.0.1:{port}{path}"]).stdout


def metric(ns, port: int, name: str) -> float | None:
    """One unlabelled metric's value from /metrics, or None when it is not there."""
    for line in http_get(ns, port, "/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None
