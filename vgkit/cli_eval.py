"""``vgkit eval``, ``vgkit bench`` and ``vgkit predict``: a trained run on a split, published numbers, one image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from vgkit.cli_common import console, styled, user_errors
from vgkit.engine.run import evaluate_checkpoint, peak_memory, run_dir_of
from vgkit.errors import VgkitError
from vgkit.fsutil import atomic_write_text

CONVENTIONS = ("continuous", "inclusive")
_CONVENTION_NOTE = {"continuous": "continuous pixels (w = x2 - x1)",
                    "inclusive": "inclusive whole pixels, Hu et al. (w = x2 - x1 + 1)"}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _breakdown_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for col in ("bucket", "n", "Acc@0.5", "mean IoU"):
        table.add_column(col, justify="left" if col == "bucket" else "right")
    for r in rows:
        table.add_row(r["bucket"], str(r["n"]), _pct(r["acc@0.5"]), _num(r["miou"]))
    return table


@user_errors
def eval_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run directory (or checkpoint file)."),
    which: str = typer.Option("best", "--which", help="best or last checkpoint."),
    dataset: str = typer.Option(None, "--dataset", help="Evaluate on another dataset (a name)."),
    root: Path = typer.Option(None, "--root", help="Dataset directory (default: the recipe's)."),
    split: str = typer.Option("test", "--split", help="Split to evaluate."),
    convention: str = typer.Option("continuous", "--iou-convention",
                                   help="continuous, or inclusive (Hu et al.'s +1)."),
    predictions: Path = typer.Option(None, "--predictions",
                                     help="JSONL out (default: RUN_DIR/predictions-<split>.jsonl)."),
    gallery: Path = typer.Option(None, "--gallery", help="Write a gallery of figures here."),
    gallery_n: int = typer.Option(24, "--gallery-n", min=1, help="Figures in the gallery."),
    batch_size: int = typer.Option(None, "--batch-size", min=1,
                                   help="Expressions per batch (default: train.eval_batch_size)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda ..."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Feature cache the run trained with."),
    errors: bool = typer.Option(False, "--errors", help="Sort failures into buckets by cause."),
) -> None:
    """Evaluate a trained run: Acc@0.5, mean IoU and breakdowns; predictions JSONL, gallery."""
    from vgkit.cli_analysis import baselines, baselines_table, error_analysis, errors_table
    from vgkit.engine.report import breakdowns, prediction_ious, write_predictions
    from vgkit.engine.visualize import write_gallery

    if convention not in CONVENTIONS:
        raise VgkitError(f"--iou-convention {convention!r}: choose continuous or inclusive")
    ev = evaluate_checkpoint(checkpoint, which=which, dataset=dataset, root=root, split=split,
                             batch_size=batch_size, device=device, cache_dir=cache_dir)
    numbers = breakdowns(ev.preds, convention)  # type: ignore[arg-type]
    buckets = None
    if errors:
        buckets, numbers["errors"] = error_analysis(
            ev, prediction_ious(ev.preds, convention))  # type: ignore[arg-type]
    run = run_dir_of(checkpoint)
    ds = ev.recipe.data.dataset.name
    stem = split if ev.own_dataset else f"{ds}-{split}"  # keep the run's own results apart
    pred_path = write_predictions(ev.preds, predictions or run / f"predictions-{stem}.jsonl",
                                  convention, buckets)  # type: ignore[arg-type]

    table = Table(title=f"{ev.recipe.name} ({which}) on {ds}/{split}", min_width=48)
    for col in ("Acc@0.5", "mean IoU", "n", "scored", "not scored"):
        table.add_column(col, justify="right")
    table.add_row(_pct(numbers["acc@0.5"]), _num(numbers["miou"]), str(numbers["n"]),
                  str(numbers["scored"]), str(numbers["n"] - numbers["scored"]))
    console.print(table)
    if numbers["unscored"]:
        console.print(styled("not scored", "yellow", ": " + ", ".join(
            f"{why} {k:,}" for why, k in numbers["unscored"].items())
            + f"; they count as failures (IoU 0) in Acc@0.5 and mean IoU over all "
              f"{numbers['n']:,} expressions; the breakdowns below cover the "
              f"{numbers['scored']:,} scored"))
    titles = {"by_length": "by phrase length (tokens)",
              "by_size": "by GT box area / image area", "by_type": "by expression type"}
    for key, title in titles.items():
        if key in numbers:
            console.print(_breakdown_table(title, numbers[key]))
    numbers["baselines"] = baselines(ev, convention)
    console.print(baselines_table(numbers["baselines"]))
    if errors:
        console.print(errors_table(numbers["errors"]))
    console.print(f"IoU of xyxy boxes in original-image pixels, box convention {convention}: "
                  f"{_CONVENTION_NOTE[convention]}")
    console.print(f"predictions -> {pred_path}")
    if gallery:
        page = write_gallery(ev.preds, ev.bundle, gallery, n=gallery_n, grid=ev.model.spec.grid,
                             convention=convention, buckets=buckets)  # type: ignore[arg-type]
        console.print(f"gallery -> {page}")
        numbers["gallery"] = str(page)
        if errors:  # which gallery figure shows which failure
            numbers["errors"]["gallery_index"] = str(page.with_name("index.json"))
    summary = {"checkpoint": str(checkpoint), "which": which, "recipe": ev.recipe.name,
               "dataset": ds, "root": str(ev.bundle.root), "split": split,
               "boxes": "xyxy original pixels", **numbers, "predictions": str(pred_path),
               "seconds": ev.seconds, "device": str(ev.device)}
    out = run / f"eval-{stem}.json"
    atomic_write_text(out, json.dumps(summary, indent=2) + "\n")
    console.print(f"numbers -> {out}")


def _published_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("source", "setting", "method / recipe", "dataset", "split", "Acc@0.5"):
        table.add_column(col, justify="right" if col == "Acc@0.5" else "left")
    for r in rows:
        table.add_row(r["source"], r["setting"], r["method"] or r["recipe"], r["dataset"],
                      r["split"], _pct(r["acc@0.5"]))
    return table


def _mib(b: int) -> str:
    return f"{b / 2**20:,.0f} MiB"


def _markdown(published: list[dict[str, Any]], rows: list[dict[str, Any]], split: str) -> str:
    lines = ["# vgkit bench", "", "## Published (declared by the recipes; Acc@0.5)", "",
             "| source | setting | method / recipe | dataset | split | Acc@0.5 |",
             "|---|---|---|---|---|---:|"]
    lines += [f"| {p['source']} | {p['setting']} | {p['method'] or p['recipe']} | {p['dataset']} "
              f"| {p['split']} | {_pct(p['acc@0.5'])} |" for p in published]
    lines += ["", f"## Checkpoints ({split} split; continuous IoU, original pixels)", ""]
    if not rows:
        return "\n".join([*lines, "(none evaluated)", ""])
    lines += ["| recipe | dataset | reported setting | reported Acc@0.5 | Acc@0.5 | mean IoU | n "
              "| refs/s | peak memory | device |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['dataset']} | {r['reported_setting'] or '-'} "
                     f"| {_pct(r['reported_acc@0.5'])} | {_pct(r['acc@0.5'])} | {_num(r['miou'])} "
                     f"| {r['n']} | {r['refs_per_s']:.1f} | {_mib(r['peak_memory_bytes'])} "
                     f"({r['peak_memory_kind']}) | {r['device']} |")
    return "\n".join([*lines, ""])


@user_errors
def bench_cmd(
    checkpoint: list[Path] = typer.Option([], "--checkpoint", help="A run directory (repeatable)."),
    dataset: str = typer.Option(None, "--dataset",
                                help="Evaluate on this dataset (default: each recipe's own)."),
    root: Path = typer.Option(None, "--root", help="Dataset directory (default: the recipe's)."),
    split: str = typer.Option("test", "--split", help="Split to evaluate."),
    markdown: Path = typer.Option(None, "--markdown", help="Write the table as Markdown here."),
    json_out: Path = typer.Option(None, "--json", help="Write the numbers as JSON here."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda ..."),
) -> None:
    """Each checkpoint's Acc@0.5 beside the published numbers its recipes declare."""
    from vgkit.engine.bench import bench_row, published
    from vgkit.engine.evaluate import accuracy
    from vgkit.plugins import get_registry

    rows = []
    for ck in checkpoint:
        ev = evaluate_checkpoint(ck, dataset=dataset, root=root, split=split, device=device)
        rows.append(bench_row(ck, ev, accuracy(ev.preds), peak_memory(ev.device),
                              ev.recipe.data.dataset.name))
    shown = {dataset} if dataset else {r["dataset"] for r in rows}
    reference = [p for p in published(get_registry(), split=split)
                 if not shown or p["dataset"] in shown]
    what = ", ".join(sorted(shown)) if shown else "every dataset"
    console.print(_published_table(reference, f"published Acc@0.5 on {what}, {split} split "
                                              "(declared by the recipes)"))
    if rows:
        table = Table(title=f"checkpoints on {split} (continuous IoU, original pixels)")
        for col in ("recipe / dataset", "reported", "Acc@0.5", "mIoU", "n", "refs/s", "peak MiB",
                    "device"):
            table.add_column(col, overflow="fold",
                             justify="left" if col in ("recipe / dataset", "device") else "right")
        for r in rows:
            reported = _pct(r["reported_acc@0.5"])
            table.add_row(styled(r["recipe"], "", "\n").append(r["dataset"], "dim"), reported,
                          _pct(r["acc@0.5"]), _num(r["miou"]), str(r["n"]),
                          f"{r['refs_per_s']:.1f}", f"{r['peak_memory_bytes'] / 2**20:,.0f}",
                          r["device"])
        console.print(table)
        console.print("reported: the number the recipe declares for its own setting on that "
                      "dataset and split; - where it declares none")
    else:
        console.print("no --checkpoint given: the published numbers only")
    if markdown:
        atomic_write_text(markdown, _markdown(reference, rows, split))
        console.print(f"markdown -> {markdown}")
    if json_out:
        atomic_write_text(json_out, json.dumps({"split": split, "published": reference,
                                                "runs": rows}, indent=2) + "\n")
        console.print(f"json -> {json_out}")


@user_errors
def predict_cmd(
    image: Path = typer.Argument(..., help="An image file."),
    phrase: str = typer.Argument(..., help="The referring expression."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run directory (or checkpoint file)."),
    which: str = typer.Option("best", "--which", help="best or last checkpoint."),
    out: Path = typer.Option(None, "--out", help="Figure PNG (default: ./<image stem>-pred.png)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda ..."),
) -> None:
    """Ground one phrase in one image: print the box, write the figure PNG."""
    from vgkit.api import load, open_image

    if which not in ("best", "last"):
        raise VgkitError(f"--which {which!r}: choose best or last")
    # a user's photo is grounded as they see it: its EXIF orientation applied (docs/data.md)
    img = open_image(image)
    g = load(checkpoint, which=which, device=device)
    pred = g.predict(img, phrase)
    x1, y1, x2, y2 = pred.box
    console.print(f"{phrase!r} in {image} ({img.size[0]}x{img.size[1]}), original pixels:")
    console.print(f"  x1 y1 x2 y2: {x1:.1f} {y1:.1f} {x2:.1f} {y2:.1f}")
    console.print(f"  x y w h:     {x1:.1f} {y1:.1f} {x2 - x1:.1f} {y2 - y1:.1f}")
    path = out or Path.cwd() / f"{image.stem}-pred.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    g.figure(img, phrase, pred).save(path)
    console.print(f"figure -> {path}")
