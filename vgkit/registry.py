"""The registry of components, by kind: what plugins add and recipes name.

A component is a *build function* plus a pydantic *options model*. Recipes
name a component and give its options; the options model (``extra="forbid"``)
validates them, so a misspelt option is an error that names it.

``backbone`` names may be families: ``timm:*`` registered once serves
``timm:resnet50``; the build function then receives ``variant="resnet50"``.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from vgkit.errors import UnknownNameError, VgkitError

KINDS = ("backbone", "text_encoder", "attention", "head", "loss", "dataset", "recipe")
FAMILY = ":*"


class NoOptions(BaseModel):
    """Options model of a component that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Component:
    """One registered component."""

    kind: str
    name: str
    build: Callable[..., Any]
    options: type[BaseModel]
    plugin: str
    doc: str

    def make_options(self, values: dict[str, Any] | None = None) -> BaseModel:
        """Validate `values` into this component's options model."""
        return self.options.model_validate(values or {})


class DuplicateComponentError(VgkitError):
    """Two plugins registered one (kind, name)."""


class Registry:
    """Components by kind and name, each remembering which plugin added it."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
        self._plugin = "<direct>"

    def add(self, kind: str, name: str, build: Callable[..., Any], *,
            options: type[BaseModel] = NoOptions, doc: str | None = None) -> Component:
        """Register `build` as component `name` of `kind` (``name:*`` for a family)."""
        if kind not in self._items:
            raise UnknownNameError("component kind", kind, KINDS)
        if name in self._items[kind]:
            other = self._items[kind][name].plugin
            raise DuplicateComponentError(
                f"{kind} {name!r} is registered by both plugin {other!r} and plugin {self._plugin!r}")
        text = doc if doc is not None else (build.__doc__ or "").strip().splitlines()[0:1]
        comp = Component(kind, name, build, options, self._plugin,
                         text if isinstance(text, str) else "".join(text))
        self._items[kind][name] = comp
        return comp

    def get(self, kind: str, name: str) -> Component:
        """The component `name` of `kind`; families match ``family:variant``."""
        if kind not in self._items:
            raise UnknownNameError("component kind", kind, KINDS)
        items = self._items[kind]
        if name in items:
            return items[name]
        family = name.split(":", 1)[0] + FAMILY if ":" in name else None
        if family in items:
            return items[family]
        raise UnknownNameError(kind.replace("_", " "), name, items)

    def names(self, kind: str) -> list[str]:
        """Registered names of `kind`, sorted."""
        return sorted(self._items[kind])

    def components(self, kind: str | None = None) -> Iterator[Component]:
        """All components (of one kind, or of every kind)."""
        for k in (kind,) if kind else KINDS:
            yield from (self._items[k][n] for n in sorted(self._items[k]))

    def remove_plugin(self, plugin: str) -> None:
        """Forget everything `plugin` registered (used when its registration fails)."""
        for items in self._items.values():
            for name in [n for n, c in items.items() if c.plugin == plugin]:
                del items[name]

    @contextmanager
    def scope(self, plugin: str) -> Iterator[Registry]:
        """Attribute registrations inside the block to `plugin`."""
        previous, self._plugin = self._plugin, plugin
        try:
            yield self
        finally:
            self._plugin = previous

    def build(self, kind: str, name: str, options: dict[str, Any] | BaseModel | None = None,
              **context: Any) -> Any:
        """Validate `options` and call the component's build function."""
        comp = self.get(kind, name)
        opts = options if isinstance(options, BaseModel) else comp.make_options(options)
        if name.endswith(FAMILY) is False and comp.name.endswith(FAMILY):
            context["variant"] = name.split(":", 1)[1]
        return comp.build(opts, **context)


class _CallableModule(types.ModuleType):
    """This module, callable: ``vgkit.registry()`` is the registry of installed plugins."""

    def __call__(self) -> Registry:
        from vgkit.plugins import get_registry

        return get_registry()


# `vgkit.registry` names both this module (``from vgkit.registry import Registry``, what
# plugins import) and the front door's ``vgkit.registry()``: importing a submodule binds
# its name on the package, so the module itself must be the callable.
sys.modules[__name__].__class__ = _CallableModule
