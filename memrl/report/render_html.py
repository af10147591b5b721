"""The report document as one self-contained HTML page."""

from __future__ import annotations

import html
from collections.abc import Sequence

from memrl.report.document import Block, Bullets, Heading, Image, Para, Table

_HEAD = ("<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\"><title>memrl report</title>",
         ("<style>body{font-family:sans-serif;max-width:1400px;margin:auto}"
          "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px}"
          "img{max-width:100%}pre{background:#f4f4f4;padding:8px}</style></head><body>"))


def render_html(blocks: Sequence[Block]) -> str:
    """``blocks`` as an HTML page; every text is escaped."""
    esc = html.escape
    out: list[str] = list(_HEAD)
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            out.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Bullets):
            out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                           for row in block.rows)
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif isinstance(block, Image):
            out.append(f"<p><img src=\"{esc(block.src)}\" alt=\"{esc(block.alt)}\"></p>")
        else:
            out.append(f"<pre>{esc(block.text)}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
