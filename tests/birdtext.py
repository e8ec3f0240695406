"""Reading BIRD configuration text in tests (unit and FV alike), and BIRD's own parser on
it."""

import subprocess


def block(text, head):
    """The body of the block that starts with the line ``head {`` (without its braces)."""
    start = text.index(head + " {\n") + len(head) + 3
    depth, i = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start:i - 1]


def sessions(text):
    """{BGP protocol: (its body, its template's included; its channels)}, in the order of
    the text."""
    out = {}
    for line in text.splitlines():
        if line.startswith("protocol bgp ") and line.endswith(" {"):
            head = line[:-2]
            body = block(text, head)
            if " from " in head:
                body += block(text, f"template bgp {head.split(' from ')[1]}")
            out[head.split()[2]] = (body, [c for c in ("ipv4", "ipv6") if f"    {c} {{" in body])
    return out


def bird_parses(directory, text, name="bird.conf"):
    """BIRD's parser (``bird -p``) accepts ``text``, written to ``directory``/``name``."""
    path = directory / name
    path.write_text(text)
    r = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, f"BIRD refuses {name}: {r.stderr}\n{text}"
