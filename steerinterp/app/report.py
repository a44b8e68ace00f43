"""A self-contained HTML report: sections of text, tables and plotly figures, plotly.js inlined once.

``render_report`` only builds the page (a string); ``RunDir.write_report`` writes it. The page loads nothing
from the network: plotly.js is embedded, figures are JSON drawn by ``Plotly.newPlot`` on load.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field

_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.5rem; color: #1b1f24; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
.subtitle { color: #57606a; margin-top: 0; } nav a { margin-right: .8rem; }
table.dataframe { border-collapse: collapse; font-size: .85rem; margin: .8rem 0; }
table.dataframe td, table.dataframe th { border: 1px solid #d0d7de; padding: .2rem .5rem; text-align: right; }
table.dataframe th { background: #f6f8fa; } .figure { margin: 1rem 0; min-height: 300px; }
pre { background: #f6f8fa; padding: .6rem; overflow-x: auto; font-size: .8rem; }
"""


@dataclass
class Section:
    """One report section: paragraphs (plain text, escaped), tables (pandas frames), plotly figures."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    code: str = ""

    @property
    def anchor(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.title.lower()).strip("-")


def _figure_div(fig, div_id: str) -> str:
    payload = fig.to_json().replace("</", "<\\/")  # no "</script>" inside the JSON
    return (f'<div class="figure" id="{div_id}"></div>\n<script type="application/json" id="{div_id}-data">'
            f"{payload}</script>")


def render_report(title: str, sections: list[Section], *, subtitle: str = "", float_format: str = "{:.4g}") -> str:
    """The whole page as a string, with plotly.js embedded (about 4.6 MB)."""
    from plotly.offline import get_plotlyjs

    body, n_fig = [], 0
    for s in sections:
        body.append(f'<h2 id="{s.anchor}">{html.escape(s.title)}</h2>')
        body.extend(f"<p>{html.escape(p)}</p>" for p in s.paragraphs)
        for t in s.tables:
            body.append(t.to_html(index=False, border=0, float_format=float_format.format, na_rep=""))
        if s.code:
            body.append(f"<pre>{html.escape(s.code)}</pre>")
        for fig in s.figures:
            body.append(_figure_div(fig, f"fig{n_fig}"))
            n_fig += 1
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    draw = ("document.querySelectorAll('script[type=\"application/json\"]').forEach(function (el) {"
            "var fig = JSON.parse(el.textContent); var div = document.getElementById(el.id.slice(0, -5));"
            "Plotly.newPlot(div, fig.data, fig.layout, {responsive: true, displaylogo: false});});")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>", f"<style>{_STYLE}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>', "</head><body>",
        f"<h1>{html.escape(title)}</h1>", f'<p class="subtitle">{html.escape(subtitle)}</p>' if subtitle else "",
        f"<nav>{nav}</nav>", *body,
        f"<script>{draw}</script>", f"<!-- steerinterp report: {json.dumps({'figures': n_fig})} -->",
        "</body></html>"])
