"""``vgkit search``: random search over the recipe's ranges, one training run per trial, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.table import Table

from vgkit.cli.common import console, styled, user_errors


def results_table(results: list[dict[str, Any]], labels: list[tuple[str, str]], title: str) -> Table:
    """The trials as a rich table, in the order given (best first); `labels`: (label, short)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("trial", "Acc@0.5", "mIoU", "epoch", *(s for _, s in labels)):
        table.add_column(col, justify="right", no_wrap=True)
    for r in results:
        values = [str(r["values"].get(label, "-")) for label, _ in labels]
        table.add_row(str(r["trial"]), f"{100 * r['val_acc@0.5']:.2f}%", f"{r['val_miou']:.3f}",
                      f"{r['best_epoch']}/{r['epochs']}", *values)
    return table


@user_errors
def search(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name or TOML/YAML file."),
    trials: int = typer.Option(..., "--trials", min=1, help="Number of trials (the search ends at N)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampled values (trial k: (seed, k))."),
    out: Path = typer.Option(None, "--out", help="Search directory (default: runs/search-<recipe>)."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Override train.epochs of every trial."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value in every trial."),
    device: str = typer.Option("auto", help="auto (CUDA if present), cpu, cuda, cuda:1 ..."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Random search over the recipe's [\\[search]] ranges; re-run the same command to continue it."""
    from vgkit.engine.search import Search, run_search, searched
    from vgkit.plugins import get_registry

    registry = get_registry()
    s = Search(recipe, Path("."), seed=seed, sets=tuple(set_), epochs=epochs)
    base = s.base(registry)
    s.out = out or Path("runs") / f"search-{base.name}"
    space = searched(base.resolved(registry), base.search)
    console.print(f"random search of {base.name}: {trials} trials, seed {seed} -> {s.out}; "
                  f"searching {', '.join(r.short for r in space) or 'nothing'}")

    def announce(trial: int, keys: dict[str, Any], resumed: bool) -> None:
        what = "resuming" if resumed else "training"
        sets = " ".join(f"{k.removeprefix('model.')}={v}" for k, v in keys.items())
        console.print(styled(f"trial {trial}/{trials}", "bold", f" {what}: {sets}"))

    try:
        results = run_search(s, trials, registry, device=device, progress=not quiet,
                             on_trial=announce)
    except KeyboardInterrupt:
        console.print(styled("interrupted", "yellow", ": the trial's last checkpoint is saved; run the same "
                      "command again to continue"))
        raise typer.Exit(130) from None
    labels = [(r.label, r.short) for r in space]
    console.print(results_table(results, labels, f"{base.name}: trials by best validation "
                                                 "Acc@0.5 (run: OUT/trial-NNN)"))
    console.print(f"results -> {s.out / 'search.json'} (one line per trial: "
                  f"{s.out / 'trials.jsonl'})")
