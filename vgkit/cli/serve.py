"""``vgkit serve``: a local web page and JSON endpoint for a trained run."""

from __future__ import annotations

from pathlib import Path

import typer

from vgkit.cli.common import console, styled, user_errors
from vgkit.errors import VgkitError

_LOCAL = {"127.0.0.1", "localhost", "::1"}


@user_errors
def serve(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run directory (or checkpoint file)."),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to bind; 0.0.0.0 opens it to the network."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port."),
    which: str = typer.Option("best", "--which", help="best or last checkpoint."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda ..."),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb",
                                        help="Largest upload accepted; larger ones get 413."),
) -> None:
    """Serve a page (image + phrase -> box, heat map, word weights) and POST /predict."""
    from vgkit.api import load
    from vgkit.engine.rundir import check_which
    from vgkit.serve import check_installed, serve

    check_which(which)
    if not max_upload_mb > 0:
        raise VgkitError(f"--max-upload-mb {max_upload_mb:g}: give a positive number of megabytes")
    check_installed()  # a missing serve extra is named before the model is loaded
    g = load(checkpoint, which=which, device=device)
    if host not in _LOCAL:
        console.print(styled("note:", "yellow", f" --host {host}: the page is reachable from "
                                                "other machines; it has no authentication"))
    shown = f"[{host}]" if ":" in host else host
    console.print(f"serving {g.recipe.name} ({which}) from {checkpoint} at http://{shown}:{port}/ "
                  "(POST /predict for scripts; Ctrl+C stops)")
    serve(g, host=host, port=port, max_upload_mb=max_upload_mb)
