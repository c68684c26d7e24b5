"""Load plugins from the ``vgkit.plugins`` entry-point group, one at a time.

A plugin that fails to import or to register is recorded with its error and
skipped; everything it registered before failing is removed, and the rest
keeps working. ``VGKIT_DISABLE_PLUGINS=name,other`` (or ``*``) skips plugins
by entry-point name; ``VGKIT_STRICT_PLUGINS=1`` (or ``strict=True``) makes
any failure fatal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from vgkit.errors import VgkitError
from vgkit.hookspecs import ENTRY_POINT_GROUP, PROJECT, VgkitSpec
from vgkit.registry import Registry

DISABLE_ENV = "VGKIT_DISABLE_PLUGINS"
STRICT_ENV = "VGKIT_STRICT_PLUGINS"


class PluginLoadError(VgkitError):
    """A plugin failed to load while strict mode was on."""


@dataclass
class PluginInfo:
    """What `vgkit plugins` shows about one plugin."""

    name: str
    target: str  # the entry point's value, e.g. "my_vgkit_plugin"
    distribution: str
    version: str
    status: str = "ok"  # ok | error | disabled
    error: str | None = None
    registered: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)


class PluginHost:
    """A pluggy manager plus the registry it fills, with a record of every plugin."""

    def __init__(self, *, strict: bool | None = None) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(VgkitSpec)
        self.registry = Registry()
        self.plugins: list[PluginInfo] = []
        self.strict = _env_flag(STRICT_ENV) if strict is None else strict

    def load_entry_points(self, disabled: set[str] | None = None) -> None:
        """Load every entry point of the group, skipping disabled ones."""
        disabled = _disabled_from_env() if disabled is None else disabled
        # vgkit's own plugins first: in a name clash the later plugin is the one rejected,
        # so a third-party plugin can never knock out the reference set
        eps = sorted(entry_points(group=ENTRY_POINT_GROUP),
                     key=lambda e: (getattr(e.dist, "name", "") != "vgkit", e.name))
        for ep in eps:
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, ep.value, dist.name if dist else "?",
                              dist.version if dist else "?")
            if "*" in disabled or ep.name in disabled:
                info.status = "disabled"
                self.plugins.append(info)
                continue
            self._load(info, ep)

    def register(self, plugin: Any, name: str, *, distribution: str = "<local>",
                 version: str = "") -> PluginInfo:
        """Register an already-imported plugin object (tests, notebooks)."""
        info = PluginInfo(name, repr(plugin), distribution, version)
        self._load(info, plugin)
        return info

    def _load(self, info: PluginInfo, source: EntryPoint | Any) -> None:
        self.plugins.append(info)
        taken = [p for p in self.plugins if p.name == info.name and p is not info and p.status == "ok"]
        if taken:  # record only: the registry and pluggy entries by that name are the first's
            info.status = "error"
            info.error = (f"VgkitError: plugin name {info.name!r} is already taken by "
                          f"{taken[0].distribution}")
            if self.strict:
                raise PluginLoadError(f"plugin {info.name!r} ({info.distribution}) failed: {info.error}")
            return None
        try:
            obj = source.load() if isinstance(source, EntryPoint) else source
            self.pm.register(obj, name=info.name)
            impls = [i for i in self.pm.hook.vgkit_register.get_hookimpls()
                     if i.plugin_name == info.name]
            if not impls:
                raise VgkitError(f"{info.target} implements no vgkit hook (vgkit_register)")
            with self.registry.scope(info.name):
                for impl in impls:
                    impl.function(registry=self.registry)
        except Exception as exc:  # a broken plugin must not take the others down
            self._fail(info, exc)
            return None
        info.registered = [(c.kind, c.name) for c in self.registry.components()
                           if c.plugin == info.name]
        return None

    def _fail(self, info: PluginInfo, exc: BaseException) -> None:
        self.registry.remove_plugin(info.name)
        if self.pm.has_plugin(info.name):
            self.pm.unregister(name=info.name)
        # one line, whatever the exception's own formatting (pluggy's spans several)
        info.status, info.error = "error", f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        if self.strict:
            raise PluginLoadError(f"plugin {info.name!r} ({info.distribution}) failed: "
                                  f"{info.error}") from exc


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _disabled_from_env() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


_host: PluginHost | None = None


def get_host(*, reload: bool = False) -> PluginHost:
    """The process-wide plugin host, loading entry points on first use."""
    global _host
    if _host is None or reload:
        host = PluginHost()
        host.load_entry_points()
        _host = host
    return _host


def get_registry() -> Registry:
    """The process-wide registry, filled from the installed plugins."""
    return get_host().registry
