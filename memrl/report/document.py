"""The report as a format-free list of blocks; a renderer turns it into Markdown or HTML."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Heading:
    level: int  # 1 = the title
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]  # each as long as ``header``


@dataclass(frozen=True)
class Image:
    alt: str
    src: str  # relative to the report file


@dataclass(frozen=True)
class Code:
    text: str  # YAML


Block = Heading | Para | Bullets | Table | Image | Code
