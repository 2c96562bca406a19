"""Small helpers shared by credo's self-contained HTML reports: a page style and figures as inline PNG data."""

from __future__ import annotations

import base64
import io
from typing import Any

PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; } th { background: #f3f3f3; }
img { max-width: 100%; } .note { color: #555; font-size: 0.9em; }
"""
"""The style of the one-model report pages (SAE, distance preservation, pose VAE); each adds its own classes."""


def png_data(fig: Any, dpi: int = 90, tight: bool = False) -> str:
    """A matplotlib figure as base64 PNG text for ``<img src="data:image/png;base64,...">``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    return base64.b64encode(buf.getvalue()).decode()
