"""The recipe reference, generated from the pydantic models that validate recipes.

Every key of every recipe table, with its type, default, allowed range and
description, and the options of each registered component: ``docs/recipes-reference.md``
is this module's output (a test checks that it is current), and ``vgkit recipes
reference`` prints it for the plugins installed.
"""

from __future__ import annotations

import inspect
import json
import re
import types
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from vgkit.recipe import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    Recipe,
    Reported,
    SearchRange,
    TrainConfig,
)
from vgkit.registry import KINDS, Registry

# (table heading as written in a recipe, its model)
SECTIONS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("top level", Recipe), ("[data]", DataConfig), ("[model]", ModelConfig),
    ("[optim]", OptimConfig), ("[train]", TrainConfig), ("[[reported]]", Reported),
    ("[[search]]", SearchRange))
_HEADER = ("| key | type | default | range | description |", "|---|---|---|---|---|")


def type_name(annotation: Any) -> str:
    """A short, readable name of a field's type (``int``, ``"a" | "b"``, ``list[str]``)."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in get_args(annotation))
    if origin is Annotated:
        return type_name(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in get_args(annotation))
    if origin in (list, tuple, dict):
        args = get_args(annotation)
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    if annotation is type(None):
        return "none"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(metadata: Iterable[Any]) -> list[str]:
    out = []
    for m in metadata:
        if isinstance(m, FieldInfo):  # Annotated[int, Field(ge=1)]
            out += _bounds(m.metadata)
        for cls, attr, op in ((Ge, "ge", ">="), (Gt, "gt", ">"), (Le, "le", "<="), (Lt, "lt", "<")):
            if isinstance(m, cls):
                out.append(f"{op} {getattr(m, attr)}")
        if isinstance(m, MinLen):
            out.append(f"length >= {m.min_length}")
        if isinstance(m, MaxLen):
            out.append(f"length <= {m.max_length}")
    return out


def value_range(field: FieldInfo) -> str:
    """The bounds pydantic enforces, on the value or on each item of a tuple (``-``: none)."""
    bounds = _bounds(field.metadata)
    items = [b for a in get_args(field.annotation) if get_origin(a) is Annotated
             for b in _bounds(get_args(a)[1:])]
    if items:
        bounds.append("each " + ", ".join(dict.fromkeys(items)))
    return ", ".join(bounds) or "-"


def default_text(field: FieldInfo) -> str:
    """The default as a recipe would write it; ``required`` where there is none."""
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        dumped = value.model_dump(mode="json", exclude_unset=True)
        return "`" + json.dumps(dumped) + "`" if dumped else "(the table's defaults)"
    return "`" + json.dumps(value) + "`" if value is not None else "none"


def _cell(text: str) -> str:
    # "<name>" would be read as an HTML tag; "<= 3" is left as it is
    return re.sub(r"<(?=[A-Za-z/])", "&lt;", text.replace("|", "\\|").replace("\n", " "))


_TRAILING_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+?)\s*$", re.M)


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """A field's trailing ``# comment`` in the class's source, where its Field has no
    description (how most plugins document their options); {} without source."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    return {k: v for k, v in _TRAILING_COMMENT.findall(source) if k in model.model_fields}


def model_table(model: type[BaseModel]) -> list[str]:
    """One Markdown table row per field of `model`."""
    rows = list(_HEADER)
    comments = field_comments(model)
    for key, field in model.model_fields.items():
        about = field.description or comments.get(key, "-")
        rows.append(f"| `{key}` | {type_name(field.annotation)} | {_cell(default_text(field))} "
                    f"| {_cell(value_range(field))} | {_cell(about)} |")
    return rows


def undocumented(models: Iterable[type[BaseModel]] | None = None) -> list[str]:
    """``Model.key`` of every field without a description (default: the recipe's models)."""
    if models is None:
        models = [m for _, m in SECTIONS]
    return [f"{m.__name__}.{k}" for m in models for k, f in m.model_fields.items()
            if not f.description]


def reference_markdown(registry: Registry, plugins: Iterable[str] | None = None) -> str:
    """The whole reference: recipe tables, then each component's options.

    `plugins` limits the components to those the named plugins registered (all when None).
    """
    keep = None if plugins is None else set(plugins)
    lines = ["# Recipe reference", "",
             "Generated from the pydantic models that validate recipes "
             "(`python -m vgkit.recipe_reference` writes it; `vgkit recipes reference` prints "
             "it for the plugins installed). A test fails when this page and the models "
             "disagree. [Recipes](recipes.md) explains how recipes are written and combined.", ""]
    for heading, model in SECTIONS:
        doc = (model.__doc__ or "").strip().splitlines()[0]
        lines += [f"## {heading}", "", doc, "", *model_table(model), ""]
    lines += ["## Component options", "",
              "A component table holds `name` and that component's options, e.g. "
              "`[model.head]` with `name = \"my-head\"` and `hidden = 500`. "
              "`data.dataset` is a component too.", ""]
    for kind in KINDS:
        if kind == "recipe":
            continue
        comps = [c for c in registry.components(kind) if keep is None or c.plugin in keep]
        if not comps:
            continue
        lines += [f"### {kind}", ""]
        for c in sorted(comps, key=lambda c: c.name):
            lines += [f"#### `{c.name}` ({c.plugin})", "", _cell(c.doc or "-"), ""]
            if c.options.model_fields:
                lines += [*model_table(c.options), ""]
            else:
                lines += ["No options.", ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    """Write the reference for vgkit's own plugins to docs/recipes-reference.md."""
    import sys
    from pathlib import Path

    from vgkit.fsutil import atomic_write_text
    from vgkit.plugins import get_host

    host = get_host()
    own = [p.name for p in host.plugins if p.distribution == "vgkit"]
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/recipes-reference.md")
    atomic_write_text(out, reference_markdown(host.registry, own))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
