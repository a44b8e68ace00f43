"""Writing plotly figures to disk (the analyses only build them)."""

from __future__ import annotations

from pathlib import Path


def write_figure(fig, path, *, offline: bool = False) -> Path:
    """Write ``fig`` as HTML. ``offline=True`` inlines plotly.js (~4 MB, opens without a network);
    otherwise the page loads plotly.js from its CDN and stays a few kB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True if offline else "cdn", full_html=True)
    return path
