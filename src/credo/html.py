"""Small helpers shared by credo's self-contained HTML reports: figures as inline PNG data."""

from __future__ import annotations

import base64
import io
from typing import Any


def png_data(fig: Any, dpi: int = 90, tight: bool = False) -> str:
    """A matplotlib figure as base64 PNG text for ``<img src="data:image/png;base64,...">``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    return base64.b64encode(buf.getvalue()).decode()
