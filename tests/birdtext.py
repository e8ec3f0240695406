"""Reading BIRD configuration text in tests (unit and FV alike)."""


def block(text, head):
    """The body of the block that starts with the line ``head {`` (without its braces)."""
    start = text.index(head + " {\n") + len(head) + 3
    depth, i = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start:i - 1]
