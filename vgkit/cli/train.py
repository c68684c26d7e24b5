"""``vgkit train``: train a recipe (one process, or many under torchrun)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import typer

from vgkit.cli.common import console, styled, user_errors


@user_errors
def train(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name or TOML/YAML file."),
    dataset: str = typer.Option(None, "--dataset", help="Override data.dataset (a name)."),
    root: Path = typer.Option(None, "--root", help="Override data.root."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe value: key=value."),
    out: Path = typer.Option(None, "--out", help="Run directory (default: runs/<recipe name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
    device: str = typer.Option("auto", help="auto (CUDA if present), cpu, cuda, cuda:1 ..."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Feature cache directory to use."),
    nproc: int = typer.Option(0, "--nproc", min=0, help="Start N processes with torchrun (DDP)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train a recipe: Adam, validation each epoch, best and last checkpoints, exact resume."""
    if nproc > 0:  # hand the processes to torchrun, and this command to each of them
        args = [a for a in _without_nproc(sys.argv[1:])]
        os.execvp(sys.executable, [sys.executable, "-m", "torch.distributed.run",
                                   "--nproc-per-node", str(nproc), "-m", "vgkit", *args])
    from vgkit.engine.rundir import RunDir
    from vgkit.engine.train import Trainer
    from vgkit.plugins import get_registry
    from vgkit.recipe import load_recipe

    overrides = list(set_)
    if dataset:
        overrides.append(f"data.dataset={dataset}")
    if root:
        overrides.append(f"data.root={root}")
    registry = get_registry()
    rec = load_recipe(recipe, overrides, registry=registry)
    run = out or Path("runs") / rec.name
    rundir = RunDir(run)
    rundir.check_for_training(resume)
    trainer = Trainer(rec, registry, run, device=device, progress=not quiet,
                      cache_dir=str(cache_dir) if cache_dir else None)
    if resume:
        trainer.resume()
    if trainer.info.is_main:
        n = sum(p.numel() for p in trainer.params)
        console.print(f"training {rec.name} on {trainer.device} x{trainer.info.world}: "
                      f"{len(trainer.train_set):,} expressions, {n:,} trainable parameters -> {run}")
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's stop, like Ctrl-C
    try:
        state = trainer.fit()
    except KeyboardInterrupt:
        if trainer.info.is_main:
            console.print(styled("interrupted", "yellow", f": saved {rundir.last}; continue with --resume"))
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        trainer.close()  # the run directory is free for the next writer
    if trainer.info.is_main:
        console.print(styled("done", "green", f": best val Acc@0.5 {state.best:.2%} -> "
                      f"{rundir.best}"))


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (kill, Slurm's time limit, torchrun stopping its workers) saves like Ctrl-C."""
    raise KeyboardInterrupt


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out
