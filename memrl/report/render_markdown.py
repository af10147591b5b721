"""The report document as Markdown."""

from __future__ import annotations

from collections.abc import Sequence

from memrl.report.document import Block, Bullets, Heading, Image, Para, Table
from memrl.report.table import markdown_table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block]) -> str:
    """``blocks`` as one Markdown text, blocks separated by a blank line."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Para):
            out.append(block.text)
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            out.append(markdown_table([_cell(h) for h in block.header],
                                      [[_cell(c) for c in row] for row in block.rows]))
        elif isinstance(block, Image):
            out.append(f"![{block.alt}]({block.src})")
        else:
            out.append(f"```yaml\n{block.text.rstrip()}\n```")
    return "\n\n".join(out) + "\n"
