"""Benchmarks write their figures into their own section of docs/performance.md.

Each section sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; running a
benchmark again replaces only its own section, so every benchmark can run on its own.
"""

from __future__ import annotations

import compileall
import os
import platform
import re
import statistics
import time
from pathlib import Path

PERF_DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
HEADER = """# Performance

Figures from the benchmarks in `bench/`.  Each section names the command that produced it.
Every figure is measured side by side with the raw kernel tool (or BIRD) doing the same
work in the same run, and given as a ratio, because absolute times depend on the machine.
"""


def compile_project() -> None:
    """Bring the project's bytecode up to date, as an installed package has it (run by
    ``contrib/setup.sh`` after its editable install, and before every benchmark): a
    process must not compile modules edited since at its start (with
    PYTHONDONTWRITEBYTECODE set, it would do so at every start)."""
    root = Path(__file__).resolve().parent.parent
    for package in ("felix_py", "bgp", "policy"):
        compileall.compile_dir(root / package, quiet=2)


def machine() -> str:
    return f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, " \
           f"kernel {platform.release()}, {time.strftime('%Y-%m-%d')}"


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_section(name: str, title: str, command: str, body: str) -> None:
    """Replace (or append) the section NAME of docs/performance.md."""
    PERF_DOC.parent.mkdir(exist_ok=True)
    text = PERF_DOC.read_text() if PERF_DOC.exists() else HEADER
    section = (f"<!-- bench:{name} -->\n## {title}\n\nCommand: `{command}`  \n"
               f"Machine: {machine()}\n\n{body.strip()}\n<!-- /bench:{name} -->")
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->",
                         re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + section + "\n"
    PERF_DOC.write_text(text)
    print(f"wrote section {name!r} of {PERF_DOC}")
