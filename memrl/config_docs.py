"""The configuration reference, generated from the config models' field descriptions.

``memrl config docs`` (or ``python -m memrl.config_docs``) writes ``docs/configuration.md``;
a test checks that the committed file equals a fresh rendering, so the reference cannot drift
from :mod:`memrl.config`, which stays the one place a key, its type, default and meaning live.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from memrl.config import Config
from memrl.generated_docs import DOCS_DIR, generator_main, write_generated
from memrl.report.table import markdown_table

DOCS_PATH = DOCS_DIR / "configuration.md"
_BOUNDS = ((annotated_types.Ge, "≥"), (annotated_types.Gt, ">"), (annotated_types.Le, "≤"),
           (annotated_types.Lt, "<"))

_HEADER = """\
# Configuration reference

<!-- Generated from memrl/config.py by `memrl config docs`; edit the descriptions there. -->

An experiment is one YAML file (see `configs/`; `base: other.yaml` starts from another file).
Any key can be overridden on the command line as `dotted.key=value`, the value read as YAML:
`memrl train configs/default.yaml trainer.max_steps=20 grpo.beta=0`. Unknown keys, wrong
types and values outside the bounds below are rejected before anything starts, naming the key.
The defaults below are the built-in ones; `configs/default.yaml` sets some differently, and
`memrl config show [CONFIG] [key=value ...]` prints the values a run would use.
"""


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The config model of a section field (``X``, ``Optional[list[X]]`` ...), else None."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_model(arg)
        if found is not None:
            return found
    return None


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is typing.Annotated:  # a constrained type: its bounds are in their own column
        return _type_name(args[0])
    if origin in (Union, types.UnionType):
        named = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping {_type_name(args[0])} → {_type_name(args[1])}"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _bounds(field: FieldInfo) -> str:
    parts = [f"{sign} {getattr(m, type(m).__name__.lower())}"
             for m in field.metadata for kind, sign in _BOUNDS if isinstance(m, kind)]
    return ", ".join(parts)


def _table(model: type[BaseModel], prefix: str) -> str:
    rows = []
    for name, field in model.model_fields.items():
        kind = _type_name(field.annotation)
        bounds = _bounds(field)
        if bounds:
            kind += f" ({bounds})"
        section = _section_model(field.annotation)
        meaning = (field.description or "").replace("|", "\\|").replace("<", "&lt;")
        if section is not None:
            meaning += f" (see [`{prefix}{name}`](#{(prefix + name).replace('.', '')}))"
            kind = "list of entries" if typing.get_origin(field.annotation) is not None \
                else "section"
            default = "null" if field.default is None and field.default_factory is None else ""
        else:
            default = _default(field)
        rows.append([f"`{prefix}{name}`", kind, default, meaning])
    return markdown_table(["key", "type", "default", "meaning"], rows)


def _sections(model: type[BaseModel], prefix: str, title: str, doc: str) -> list[str]:
    lines = [f"## {title}", ""]
    if doc:
        lines += [doc, ""]
    lines += [_table(model, prefix), ""]
    for name, field in model.model_fields.items():
        section = _section_model(field.annotation)
        if section is not None:
            key = prefix + name
            lines += _sections(section, key + ("[]." if typing.get_origin(field.annotation)
                                               else "."), f"`{key}`", field.description or "")
    return lines


def render_reference() -> str:
    """The whole reference as Markdown (what ``docs/configuration.md`` holds)."""
    lines = [_HEADER] + _sections(Config, "", "Top-level keys", "")
    return "\n".join(lines).rstrip() + "\n"


def write_reference(path: Path = DOCS_PATH) -> Path:
    """Write :func:`render_reference` to ``path`` (default ``docs/configuration.md``)."""
    return write_generated(render_reference(), path)


def main(argv: list[str] | None = None) -> int:
    """``python -m memrl.config_docs [--out PATH | --stdout]``."""
    return generator_main(argv, prog="memrl config docs", description=__doc__,
                          render=render_reference, default=DOCS_PATH)


if __name__ == "__main__":
    sys.exit(main())
