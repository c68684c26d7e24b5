"""The numbers behind ``vgkit bench``: published results the recipes declare, and checkpoint rows.

The core holds no published number itself: each one comes from a recipe's
``[[reported]]`` tables (see :class:`vgkit.recipe.Reported`), so a new plugin set
gets benchmark rows by declaring them in its recipes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from vgkit.engine.report import number, percent
from vgkit.errors import VgkitError
from vgkit.recipe import load_recipe
from vgkit.registry import Registry


def published(registry: Registry, dataset: str | None = None,
              split: str | None = None) -> list[dict[str, Any]]:
    """Every published Acc@0.5 the registered recipes declare (for one dataset and split)."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for comp in registry.components("recipe"):
        try:
            recipe = load_recipe(comp.name, registry=registry)
        except VgkitError as exc:  # said, not silently skipped: its numbers are missing
            warnings.warn(f"recipe {comp.name!r} from plugin {comp.plugin!r} is not shown: {exc}",
                          stacklevel=2)
            continue
        for r in recipe.reported:
            if r.metric != "acc@0.5" or dataset not in (None, r.dataset) \
                    or split not in (None, r.split):
                continue
            key = (r.source, r.setting, r.method, r.dataset, r.split, r.value)
            if key in seen:
                continue
            seen.add(key)
            rows.append({"source": r.source, "setting": r.setting,
                         "method": r.method or None, "recipe": None if r.method else recipe.name,
                         "dataset": r.dataset, "split": r.split, "acc@0.5": r.value / 100})
    return rows


def bench_row(checkpoint: Path, ev: Any, metrics: dict[str, Any], memory: tuple[int, str],
              dataset: str) -> dict[str, Any]:
    """One evaluated checkpoint's row, beside the number its recipe declares for that split."""
    own = ev.recipe.own_reported(dataset=dataset, split=ev.split)
    ref = own[0] if own else None
    return {"checkpoint": str(checkpoint), "recipe": ev.recipe.name, "dataset": dataset,
            "split": ev.split,
            "reported_acc@0.5": ref.value / 100 if ref else None,
            "reported_setting": ref.setting if ref else None,
            "reported_source": ref.source if ref else None,
            "acc@0.5": metrics["acc@0.5"], "miou": metrics["miou"], "n": metrics["n"],
            "scored": metrics["scored"],
            "refs_per_s": metrics["scored"] / max(ev.seconds, 1e-9), "seconds": ev.seconds,
            "peak_memory_bytes": memory[0], "peak_memory_kind": memory[1],
            "device": str(ev.device)}


def _mib(b: int) -> str:
    return f"{b / 2**20:,.0f} MiB"


def bench_markdown(published: list[dict[str, Any]], rows: list[dict[str, Any]],
                   split: str | None) -> str:
    """The published rows and the checkpoints' rows as a Markdown page (split None: each run's own)."""
    lines = ["# vgkit bench", "", "## Published (declared by the recipes; Acc@0.5)", "",
             "| source | setting | method / recipe | dataset | split | Acc@0.5 |",
             "|---|---|---|---|---|---:|"]
    lines += [f"| {p['source']} | {p['setting']} | {p['method'] or p['recipe']} | {p['dataset']} "
              f"| {p['split']} | {percent(p['acc@0.5'])} |" for p in published]
    where = f"{split} split" if split else "each recipe's data.test_split"
    lines += ["", f"## Checkpoints ({where}; continuous IoU, original pixels)", ""]
    if not rows:
        return "\n".join([*lines, "(none evaluated)", ""])
    lines += ["| recipe | dataset | split | reported setting | reported Acc@0.5 | Acc@0.5 "
              "| mean IoU | n | refs/s | peak memory | device |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['dataset']} | {r['split']} "
                     f"| {r['reported_setting'] or '-'} "
                     f"| {percent(r['reported_acc@0.5'])} | {percent(r['acc@0.5'])} | {number(r['miou'])} "
                     f"| {r['n']} | {r['refs_per_s']:.1f} | {_mib(r['peak_memory_bytes'])} "
                     f"({r['peak_memory_kind']}) | {r['device']} |")
    return "\n".join([*lines, ""])
