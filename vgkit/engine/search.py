"""Random search over the hyper-parameter ranges a recipe declares (``search`` in the recipe).

A recipe's ``[[search]]`` tables are its search space: one range per
hyper-parameter (low, high, step), with the recipe keys each range sets and,
where its source says, the value it settled on.

Trial k's values depend only on (seed, k): every range is drawn in the order the
recipe lists them whether or not the recipe has its keys, so the same seed gives
the same values to the keys two recipes share (variants inherit the space through
``extends``). A trial sets only the keys its recipe has (a variant without a
component gets none of that component's keys). Each trial is a normal training
run in ``DIR/trial-NNN``; ``DIR/trials.jsonl`` gets one line per finished trial
and ``DIR/search.json`` the settings and the ranked results, so running the same
command again skips finished trials and resumes an unfinished one from its last
checkpoint.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vgkit.engine.rundir import RunDir
from vgkit.errors import VgkitError
from vgkit.fsutil import atomic_write_text
from vgkit.recipe import Recipe, SearchRange, has_path, load_recipe
from vgkit.registry import Registry


def sample(seed: int, trial: int, space: Sequence[SearchRange]) -> dict[str, float | int]:
    """Trial `trial`'s value of every range (by label), drawn from (seed, trial) alone."""
    rng = random.Random(f"vgkit-search/{seed}/{trial}")
    return {r.label: rng.choice(r.values()) for r in space}


def trial_overrides(resolved: dict[str, Any], values: dict[str, float | int],
                    space: Sequence[SearchRange]) -> dict[str, float | int]:
    """``{key: value}`` for the sampled values whose keys the recipe has."""
    return {k: values[r.label] for r in space for k in r.keys if has_path(resolved, k)}


def searched(resolved: dict[str, Any], space: Sequence[SearchRange]) -> list[SearchRange]:
    """The ranges of `space` that set at least one key of the recipe."""
    return [r for r in space if any(has_path(resolved, k) for k in r.keys)]


@dataclass
class Search:
    """One random search: its settings and where it lives."""

    recipe: str  # name or file, as given
    out: Path
    seed: int = 0
    sets: tuple[str, ...] = ()  # the user's --set values, applied before each trial's
    epochs: int | None = None

    def settings(self) -> dict[str, Any]:
        """What must match for a re-run to continue this search."""
        return {"recipe": self.recipe, "seed": self.seed, "set": list(self.sets),
                "epochs": self.epochs}

    def _extra(self) -> list[str]:
        return [f"train.epochs={self.epochs}"] if self.epochs else []

    def base(self, registry: Registry) -> Recipe:
        """The recipe before sampling (user --set and --epochs applied)."""
        return load_recipe(self.recipe, [*self.sets, *self._extra()], registry=registry)

    def trial_recipe(self, trial: int, registry: Registry) -> tuple[Recipe, dict[str, Any]]:
        """Trial `trial`'s validated recipe and the ``{key: value}`` it sets."""
        base = self.base(registry)
        keys = trial_overrides(base.resolved(registry), sample(self.seed, trial, base.search),
                               base.search)
        sets = [*self.sets, *self._extra(), *(f"{k}={v}" for k, v in keys.items())]
        return load_recipe(self.recipe, sets, registry=registry), keys

    def run_dir(self, trial: int) -> Path:
        """Where trial `trial` trains."""
        return self.out / f"trial-{trial:03d}"

    def finished(self) -> dict[int, dict[str, Any]]:
        """The recorded results of finished trials, by trial number."""
        path = self.out / "trials.jsonl"
        if not path.is_file():
            return {}
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        return {r["trial"]: r for r in rows}

    def check_settings(self) -> None:
        """Refuse to continue a search in `out` that had other settings."""
        path = self.out / "search.json"
        if not path.is_file():
            return
        old = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
        for key, value in self.settings().items():
            if old.get(key) != value:
                raise VgkitError(f"{self.out} holds a search with {key} = {old.get(key)!r}, "
                                 f"not {value!r}; re-run it with the same settings or choose "
                                 "another --out")

    def write_summary(self, results: list[dict[str, Any]], space: Sequence[SearchRange]) -> Path:
        """search.json: the settings, the searched ranges and the results, best first."""
        table = [r.model_dump() for r in space]
        data = {"settings": self.settings(), "space": table, "trials": ranked(results)}
        return atomic_write_text(self.out / "search.json", json.dumps(data, indent=2) + "\n")


def ranked(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results sorted by best validation Acc@0.5, best first (ties: lower trial first)."""
    return sorted(results, key=lambda r: (-r["val_acc@0.5"], r["trial"]))


def run_search(search: Search, trials: int, registry: Registry, *, device: str = "auto",
               progress: bool = True,
               on_trial: Callable[[int, dict[str, Any], bool], None] | None = None) -> list[dict[str, Any]]:
    """Train trials 1..`trials` that are not finished yet; return every finished trial's result.

    `on_trial(trial, {key: value}, resumed)` is called before each trial that trains.
    """
    from vgkit.engine.train import Trainer

    if trials < 1:
        raise VgkitError(f"--trials must be at least 1, got {trials}")
    search.check_settings()
    search.out.mkdir(parents=True, exist_ok=True)
    base = search.base(registry)
    if not base.search:
        raise VgkitError(f"recipe {base.name!r} declares no search space: add [[search]] "
                         "tables (label, short, keys, low, high, step) to it")
    space = searched(base.resolved(registry), base.search)
    done = search.finished()
    search.write_summary(list(done.values()), space)  # the settings, before any training
    for trial in range(1, trials + 1):
        if trial in done:
            continue
        recipe, keys = search.trial_recipe(trial, registry)
        drawn = sample(search.seed, trial, base.search)
        values = {r.label: drawn[r.label] for r in space}
        run = search.run_dir(trial)
        resumed = RunDir(run).has_run()
        if not resumed and RunDir(run).metrics.is_file():
            # killed before its first checkpoint: it starts over, and so does its log
            RunDir(run).metrics.unlink()
        if on_trial:
            on_trial(trial, keys, resumed)
        tick = time.perf_counter()
        with Trainer(recipe, registry, run, device=device, progress=progress) as trainer:
            if resumed:
                trainer.resume()
            state = trainer.fit()
        best = max(state.history, key=lambda h: h["acc@0.5"])
        row = {"trial": trial, "run": run.name, "values": values, "set": keys,
               "val_acc@0.5": best["acc@0.5"], "val_miou": best["miou"],
               "best_epoch": best["epoch"], "epochs": recipe.train.epochs,
               "seconds": time.perf_counter() - tick, "resumed": resumed}
        with (search.out / "trials.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        done[trial] = row
        search.write_summary(list(done.values()), space)
    return ranked(list(done.values()))
