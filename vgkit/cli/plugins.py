"""``vgkit plugins``: what is installed, what each plugin registered, load errors."""

from __future__ import annotations

import typer
from rich.table import Table

from vgkit.cli.common import console, styled, user_errors


@user_errors
def plugins(verbose: bool = typer.Option(False, "--verbose", "-v",
                                         help="Also list every component with its description.")
            ) -> None:
    """List installed plugins: distribution, version, what each registered, load errors."""
    from vgkit.plugins import get_host

    host = get_host()
    table = Table(title="vgkit plugins", show_lines=True)
    for col in ("plugin", "distribution", "version", "status", "registered"):
        table.add_column(col)
    for p in host.plugins:
        by_kind: dict[str, list[str]] = {}
        for kind, name in p.registered:
            by_kind.setdefault(kind, []).append(name)
        what = "\n".join(f"{k}: {', '.join(v)}" for k, v in by_kind.items())
        status = {"ok": styled("ok", "green"), "disabled": styled("disabled", "dim")}.get(
            p.status, styled("error", "red", f"\n{p.error}"))
        table.add_row(p.name, p.distribution, p.version, status, what or "-")
    console.print(table)
    if not host.plugins:
        console.print("no plugins installed (entry-point group 'vgkit.plugins')")
    if verbose:
        comps = Table(title="components")
        for col in ("kind", "name", "plugin", "description"):
            comps.add_column(col)
        for c in host.registry.components():
            comps.add_row(c.kind, c.name, c.plugin, c.doc or "-")
        console.print(comps)
