"""The demo's index page: one section per part with its headline numbers, the full-benchmark figures to read
them against, its time, and a link to its own report."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

from credo.demo.parts import PartResult
from credo.io import atomic_write_bytes

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } th { background: #f3f3f3; }
section { border-top: 1px solid #ddd; padding-top: 0.5em; margin-top: 1.5em; }
.note { color: #555; font-size: 0.9em; } .time { color: #555; font-weight: normal; font-size: 0.8em; }
a.report { font-weight: bold; }
"""


def _section(i: int, part: PartResult, index_dir: Path) -> str:
    href = Path(os.path.relpath(part.report, index_dir)).as_posix()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["", *part.columns])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in [label, *values]) + "</tr>"
        for label, values in part.rows
    )
    return (
        f'<section id="{html.escape(part.name)}"><h2>{i}. {html.escape(part.title)} '
        f'<span class="time">{part.seconds:.0f} s</span></h2>'
        f"<p>{html.escape(part.what)}</p><table><tr>{head}</tr>{body}</table>"
        f'<p class="note">{html.escape(part.reference)}</p>'
        f'<p><a class="report" href="{html.escape(href)}">{html.escape(part.title)}: full report</a></p></section>'
    )


def write_index(
    out: str | Path, parts: Sequence[PartResult], total_seconds: float, command: str = ""
) -> Path:
    """Write ``out/index.html`` linking every part's report (relative links, so the folder can be moved)."""
    out = Path(out)
    title = "credo demo"
    intro = (
        f"{len(parts)} part{'s' if len(parts) != 1 else ''} in {total_seconds:.0f} s. Each runs one system at a "
        "small budget chosen so its methods rank as they do in the full benchmark; the grey line under each "
        "table gives the full benchmark's figures (BENCHMARKS.md) to read the numbers against."
    )
    sections = "".join(_section(i, p, out) for i, p in enumerate(parts, 1))
    rerun = f'<p class="note">Command: <code>{html.escape(command)}</code></p>' if command else ""
    page = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title><style>{_CSS}</style></head>'
        f'<body><h1>{title}</h1><p class="note">{html.escape(intro)}</p>{rerun}{sections}</body></html>\n'
    )
    path = out / "index.html"
    atomic_write_bytes(path, page.encode())
    return path
