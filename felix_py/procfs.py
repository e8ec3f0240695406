"""What /proc tells about a process: whether it still runs, and when it started.

A pid alone does not name a process for long: once it exits the kernel may give the pid to
another.  The pid with its start time (field 22 of ``/proc/<pid>/stat``, in clock ticks
since boot) does, for as long as the machine runs.
"""

from __future__ import annotations


def start_time(pid: int | str, proc: str = "/proc") -> int | None:
    """The process's start time in clock ticks since boot, from ``<proc>/<pid>/stat``
    (``pid`` may be "self"); None if there is no such process (or no /proc) or it is a
    zombie (it has exited; only its exit status is left for its parent to collect)."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    # The command name, field 2, is in parentheses and may hold spaces and parentheses:
    # the fields are counted from after the last ")".  rest[0] is field 3, the state.
    end = text.rfind(b")")
    rest = text[end + 1:].split()
    if end < 0 or len(rest) < 20 or rest[0] == b"Z":
        return None
    try:
        return int(rest[19])
    except ValueError:
        return None
