"""``vgkit weights``: what a local weights file holds and whether it fits a backbone."""

from __future__ import annotations

import warnings
from collections import Counter

import typer

from vgkit.cli.common import console, styled, user_errors
from vgkit.errors import VgkitError

app = typer.Typer(help="Inspect local pretrained weights files.", no_args_is_help=True)


@app.command("inspect")
@user_errors
def inspect(
    file: str = typer.Argument(..., help="A .pth/.pt/.bin/.safetensors file, or pkg:NAME."),
    backbone: str = typer.Option(None, help="Match it against this registered backbone."),
) -> None:
    """Say which layout a weights file has and, with --backbone, how many tensors match."""
    from pathlib import Path

    from vgkit.pretrained import is_packaged, packaged_file
    from vgkit.weights import detect_layout, match_state, read_state_dict

    path = packaged_file(file) if is_packaged(file) else Path(file).expanduser()
    state = read_state_dict(path)
    heads = Counter(k.split(".")[0] for k in state)
    groups = ", ".join(f"{h} ({n})" for h, n in heads.most_common(6))
    more = f", ... {len(heads) - 6} more" if len(heads) > 6 else ""
    params = sum(v.numel() for v in state.values())
    console.print(f"{path}: {len(state)} tensors, {params:,} values; layout "
                  f"{detect_layout(state)}; top-level names: {groups}{more}",
                  soft_wrap=True, markup=False)
    if backbone is None:
        return
    from vgkit.plugins import get_registry

    with warnings.catch_warnings():  # the random-init warning is not news here
        warnings.simplefilter("ignore")
        bb = get_registry().build("backbone", backbone, {})
    target = getattr(bb, "body", bb)
    m = match_state(path, state, target)
    verdict = ("fits", "green") if m.ok else ("does not fit", "red")
    console.print(styled(*verdict, f" {backbone}: {m.summary()}"), soft_wrap=True)
    if not m.ok:
        raise VgkitError(f"{path}: does not fit backbone {backbone!r}")
