"""The plugin contract: the hooks a vgkit plugin implements (pluggy project "vgkit").

A plugin is a module (or object) named by an entry point in the group
``vgkit.plugins``. It implements one or more of these hooks with
``@vgkit.hookimpl``. Plugins are loaded one entry point at a time; a plugin
that raises is reported by ``vgkit plugins`` and skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from vgkit.registry import Registry

PROJECT = "vgkit"
ENTRY_POINT_GROUP = "vgkit.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class VgkitSpec:
    """Hook specifications. Only ``vgkit_register`` is required of a plugin."""

    @hookspec
    def vgkit_register(self, registry: Registry) -> None:
        """Register components with ``registry.add(kind, name, build, options=Model)``.

        Kinds and what each build function must return are documented in
        :mod:`vgkit.interfaces`; ``vgkit.registry.KINDS`` lists them.
        """
