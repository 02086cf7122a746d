"""Shared reporting for benchmarks.

Every benchmark ends by calling :func:`record`, which prints its headline
figures as ``name=value`` lines and replaces its own section of
``docs/benchmarks.md`` (between ``<!-- bench:NAME -->`` markers), leaving the
other benchmarks' sections untouched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by `python -m bench.NAME`; rerun it to refresh.\n"


def parse_args(
    description: str,
    argv: Sequence[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], object] | None = None,
) -> argparse.Namespace:
    """The common command line: ``--quick`` (finishes within a minute) and ``--no-write``,
    and whatever ``extra`` adds for one benchmark."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="short run, finishes within a minute")
    p.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    if extra is not None:
        extra(p)
    return p.parse_args(argv)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats are shown with 3 significant decimals."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def record(
    name: str,
    title: str,
    body: str,
    figures: Mapping[str, float | int | str],
    *,
    quick: bool,
    write: bool = True,
) -> None:
    """Print ``body`` and the figures, and store them as section ``name`` of docs/benchmarks.md."""
    print(body)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick run" if quick else "full run"
    lines = [f"## {title}", "", f"_{stamp}, {mode}, {machine()}_", "", body, ""]
    lines += ["Headline figures:", "", "```"]
    lines += [f"{k}={_fmt(v)}" for k, v in figures.items()]
    lines += ["```", ""]
    section = f"<!-- bench:{name} -->\n" + "\n".join(lines) + f"<!-- /bench:{name} -->"
    if write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        text = DOC.read_text() if DOC.exists() else HEADER
        pattern = re.compile(
            rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S
        )
        if pattern.search(text):
            text = pattern.sub(lambda _m: section, text)
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        DOC.write_text(text)
    for k, v in figures.items():
        print(f"{k}={_fmt(v)}")


def _fmt(v: float | int | str) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
