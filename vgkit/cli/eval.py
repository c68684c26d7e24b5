"""``vgkit eval``, ``vgkit bench`` and ``vgkit predict``: a trained run on a split, published numbers, one image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from vgkit.cli.common import console, styled, user_errors
from vgkit.engine.report import number, percent
from vgkit.engine.run import check_convention, evaluate_checkpoint, peak_memory, report_order
from vgkit.errors import VgkitError
from vgkit.fsutil import atomic_write_text

_CONVENTION_NOTE = {"continuous": "continuous pixels (w = x2 - x1)",
                    "inclusive": "inclusive whole pixels, ReferIt's hu form (w = x2 - x1 + 1)"}


def _breakdown_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for col in ("bucket", "n", "Acc@0.5", "mean IoU"):
        table.add_column(col, justify="left" if col == "bucket" else "right")
    for r in rows:
        table.add_row(r["bucket"], str(r["n"]), percent(r["acc@0.5"]), number(r["miou"]))
    return table


@user_errors
def eval_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run directory (or checkpoint file)."),
    which: str = typer.Option("best", "--which", help="best or last checkpoint."),
    dataset: str = typer.Option(None, "--dataset", help="Evaluate on another dataset (a name)."),
    root: Path = typer.Option(None, "--root", help="Dataset directory (default: the recipe's)."),
    split: str = typer.Option(None, "--split", help="Split to evaluate \\[default: the recipe's data.test_split]."),
    splits: str = typer.Option(None, "--splits",
                               help="Several splits in one run: comma-separated, or all (every "
                                    "split but train/trainval). One table."),
    protocol: str = typer.Option(None, "--protocol",
                                 help="Scoring: iou>=0.5 (default), iou>0.5, giou>=0.5, "
                                      "inclusive; comma-separated, or all."),
    convention: str = typer.Option("continuous", "--iou-convention",
                                   help="continuous, or inclusive (ReferIt's hu-form +1)."),
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
    from vgkit.engine.protocols import parse_protocols
    from vgkit.engine.run import report_evaluation

    check_convention(convention)  # before the model is loaded
    chosen = parse_protocols(protocol) if protocol is not None else []
    if splits is not None:
        if split is not None:
            raise VgkitError(f"--split {split} and --splits {splits}: give one split with "
                             "--split or several with --splits, not both")
        one_split_only = [name for name, given in (
            ("--predictions", predictions), ("--gallery", gallery), ("--errors", errors),
            ("--iou-convention", convention != "continuous")) if given]
        if one_split_only:
            raise VgkitError(f"{one_split_only[0]} takes one split: use --split, not --splits"
                             + (" (or --protocol inclusive)"
                                if one_split_only[0] == "--iou-convention" else ""))
        _eval_splits(checkpoint, splits, protocol, which=which, dataset=dataset, root=root,
                     batch_size=batch_size, device=device, cache_dir=cache_dir)
        return
    ev = evaluate_checkpoint(checkpoint, which=which, dataset=dataset, root=root, split=split,
                             batch_size=batch_size, device=device, cache_dir=cache_dir)
    numbers, out = report_evaluation(ev, checkpoint, which=which, convention=convention,
                                     errors=errors, predictions=predictions, gallery=gallery,
                                     gallery_n=gallery_n, protocols=chosen)
    table = Table(title=f"{ev.recipe.name} ({which}) on {numbers['dataset']}/{ev.split}",
                  min_width=48)
    for col in ("Acc@0.5", "mean IoU", "n", "scored", "not scored"):
        table.add_column(col, justify="right")
    table.add_row(percent(numbers["acc@0.5"]), number(numbers["miou"]), str(numbers["n"]),
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
    console.print(baselines_table(numbers["baselines"]))
    if chosen:
        console.print(_splits_table(f"{ev.split} under each protocol", {ev.split: {
            "n": numbers["n"], "scored": numbers["scored"], "miou": numbers["miou"],
            "protocols": numbers["protocols"]}}, chosen))
        _protocol_legend(chosen)
    if errors:
        console.print(errors_table(numbers["errors"]))
    console.print(f"IoU of xyxy boxes in original-image pixels, box convention {convention}: "
                  f"{_CONVENTION_NOTE[convention]}")
    console.print(f"predictions -> {numbers['predictions']}")
    if gallery:
        console.print(f"gallery -> {numbers['gallery']}")
    console.print(f"numbers -> {out}")


def _splits_table(title: str, results: dict[str, dict[str, Any]], protocols: list[Any]) -> Table:
    """Rows: splits; columns: n, scored, each protocol's accuracy, mean IoU."""
    table = Table(title=title)
    for col in ("split", "n", "scored", *(p.name for p in protocols), "mean IoU"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['n']:,}", f"{r['scored']:,}",
                      *(percent(r["protocols"][p.name]["acc"]) for p in protocols),
                      number(r["miou"]))
    return table


def _protocol_legend(protocols: list[Any]) -> None:
    for p in protocols:
        console.print(f"  {p.name}: {p.description}")
    console.print("boxes xyxy in original-image pixels; mean IoU continuous; expressions not "
                  "scored count as failures (IoU 0)")


def _eval_splits(checkpoint: Path, splits: str, protocol: str | None, **kw: Any) -> None:
    """``vgkit eval --splits``: every split in one pass, one table (rows splits, columns protocols)."""
    from vgkit.engine.run import evaluate_splits, report_splits

    se = evaluate_splits(checkpoint, splits, protocols=protocol, **kw)
    summary, out = report_splits(se, checkpoint, which=kw["which"])
    console.print(_splits_table(
        f"{se.recipe.name} ({kw['which']}) on {summary['dataset']}: {len(se.splits)} splits, "
        f"one pass over {se.images:,} images", summary["results"], se.protocols))
    for name, r in summary["results"].items():
        if r["unscored"]:
            console.print(styled("not scored", "yellow", f" in {name}: " + ", ".join(
                f"{why} {k:,}" for why, k in r["unscored"].items())))
    _protocol_legend(se.protocols)
    console.print(f"predictions -> {', '.join(summary['predictions'].values())}")
    console.print(f"numbers -> {out}")


def baselines_table(base: dict[str, Any]) -> Table:
    """The baselines as a rich table."""
    table = Table(title="baselines that ignore the phrase (same split)")
    for col in ("baseline", "Acc@0.5", "mean IoU"):
        table.add_column(col, justify="left" if col == "baseline" else "right")
    table.add_row("whole image (0, 0, 1, 1)", percent(base["whole_image"]),
                  f"{base['whole_image_miou']:.3f}")
    box = ", ".join(f"{v:.2f}" for v in base["constant_box_xyxy_fraction"])
    table.add_row(f"best constant box ({box}), fit on {base['constant_box_fit_on']}",
                  percent(base["constant_box"]), f"{base['constant_box_miou']:.3f}")
    table.add_row("perfect detector, random object (expected)", percent(base["phrase_blind"]), "-")
    return table


def errors_table(summary: dict[str, Any]) -> Table:
    """Failure counts per bucket, in the order of precedence; n/a without image attention."""
    table = Table(title=f"why the {summary['failures']:,} failures (IoU < 0.5) failed, "
                        "first bucket that applies")
    for col in ("rank", "bucket", "n", "share of failures"):
        table.add_column(col, justify="left" if col == "bucket" else "right")
    for r in summary["buckets"]:
        table.add_row(str(r["rank"]), r["bucket"], "n/a" if r["n"] is None else f"{r['n']:,}",
                      "n/a" if r["share"] is None else percent(r["share"]))
    return table


def _published_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("source", "setting", "method / recipe", "dataset", "split", "Acc@0.5"):
        table.add_column(col, justify="right" if col == "Acc@0.5" else "left")
    for r in rows:
        table.add_row(r["source"], r["setting"], r["method"] or r["recipe"], r["dataset"],
                      r["split"], percent(r["acc@0.5"]))
    return table


@user_errors
def bench_cmd(
    checkpoint: list[Path] = typer.Option([], "--checkpoint", help="A run directory (repeatable)."),
    dataset: str = typer.Option(None, "--dataset",
                                help="Evaluate on this dataset (default: each recipe's own)."),
    root: Path = typer.Option(None, "--root", help="Dataset directory (default: the recipe's)."),
    split: str = typer.Option(None, "--split",
                              help="One split: the published numbers for it, the checkpoints "
                                   "on it \\[default: every published split; each checkpoint on "
                                   "its recipe's data.test_split]."),
    markdown: Path = typer.Option(None, "--markdown", help="Write the table as Markdown here."),
    json_out: Path = typer.Option(None, "--json", help="Write the numbers as JSON here."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda ..."),
) -> None:
    """Each checkpoint's Acc@0.5 beside the published numbers its recipes declare."""
    from vgkit.engine.bench import bench_markdown, bench_row, published
    from vgkit.engine.evaluate import accuracy
    from vgkit.plugins import get_registry

    registry = get_registry()
    if dataset:
        registry.get("dataset", dataset)  # an unknown name is an error, not an empty table
    rows = []
    for ck in checkpoint:
        ev = evaluate_checkpoint(ck, dataset=dataset, root=root, split=split, device=device)
        rows.append(bench_row(ck, ev, accuracy(ev.preds), peak_memory(ev.device),
                              ev.recipe.data.dataset.name))
    shown = {dataset} if dataset else {r["dataset"] for r in rows}
    declared = [p for p in published(registry) if not shown or p["dataset"] in shown]
    rank = {d: i for i, d in enumerate(dict.fromkeys(p["dataset"] for p in declared))}
    reference = sorted((p for p in declared if split in (None, p["split"])),
                       key=lambda p: (rank[p["dataset"]], report_order(p["split"])))
    what = ", ".join(sorted(shown)) if shown else "every dataset"
    console.print(_published_table(reference, f"published Acc@0.5 on {what}, "
                                              f"{f'{split} split' if split else 'every split'} "
                                              "(declared by the recipes)"))
    if not declared:
        console.print(f"no recipe declares a published number for {what}")
    elif split and not reference:  # e.g. refcoco has no "test": say which splits it has
        have = sorted({p["split"] for p in declared}, key=report_order)
        console.print(f"no number is declared for the {split} split of {what}; the recipes "
                      f"declare {', '.join(have)} (--split {have[0]})")
    if rows:
        where = split or "each recipe's data.test_split"
        table = Table(title=f"checkpoints on {where} (continuous IoU, original pixels)")
        for col in ("recipe / dataset split", "reported", "Acc@0.5", "mIoU", "n", "refs/s", "peak MiB",
                    "device"):
            table.add_column(col, overflow="fold",
                             justify="left" if col in ("recipe / dataset split", "device") else "right")
        for r in rows:
            reported = percent(r["reported_acc@0.5"])
            table.add_row(styled(r["recipe"], "", "\n").append(f"{r['dataset']} {r['split']}",
                                                                 "dim"), reported,
                          percent(r["acc@0.5"]), number(r["miou"]), str(r["n"]),
                          f"{r['refs_per_s']:.1f}", f"{r['peak_memory_bytes'] / 2**20:,.0f}",
                          r["device"])
        console.print(table)
        console.print("reported: the number the recipe declares for its own setting on that "
                      "dataset and split; - where it declares none")
    else:
        console.print("no --checkpoint given: the published numbers only")
    if markdown:
        atomic_write_text(markdown, bench_markdown(reference, rows, split))
        console.print(f"markdown -> {markdown}")
    if json_out:
        atomic_write_text(json_out, json.dumps({"split": split, "published": reference,
                                                "runs": rows}, indent=2) + "\n")
        console.print(f"json -> {json_out}")


@user_errors
def predict_cmd(
    image: Path = typer.Argument(..., help="An image file."),
    phrase: str = typer.Argument(..., help="The referring expression."),
    checkpoint: Path = typer.Option(None, "--checkpoint",
                                    help="Run directory (or checkpoint file)."),
    onnx: Path = typer.Option(None, "--onnx",
                              help="An exported model.onnx (its .json beside it) instead of a run."),
    which: str = typer.Option("best", "--which", help="best or last checkpoint."),
    out: Path = typer.Option(None, "--out", help="Figure PNG (default: ./<image stem>-pred.png)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda ..."),
) -> None:
    """Ground one phrase in one image: print the box, write the figure PNG."""
    from vgkit.api import load, open_image
    from vgkit.engine.rundir import check_which

    if (checkpoint is None) == (onnx is None):
        raise VgkitError("give --checkpoint RUN or --onnx MODEL.onnx, one of the two")
    check_which(which)  # before the image is read
    # a user's photo is grounded as they see it: its EXIF orientation applied (docs/data.md)
    img = open_image(image)
    if onnx is not None:
        from vgkit.export import OnnxGrounder

        g: Any = OnnxGrounder(onnx)
        source = f"onnxruntime, {onnx}"
    else:
        g = load(checkpoint, which=which, device=device)
        source = f"{checkpoint}"
    pred = g.predict(img, phrase)
    x1, y1, x2, y2 = pred.box
    console.print(f"{phrase!r} in {image} ({img.size[0]}x{img.size[1]}), original pixels "
                  f"({source}):")
    console.print(f"  x1 y1 x2 y2: {x1:.1f} {y1:.1f} {x2:.1f} {y2:.1f}")
    console.print(f"  x y w h:     {x1:.1f} {y1:.1f} {x2 - x1:.1f} {y2 - y1:.1f}")
    path = out or Path.cwd() / f"{image.stem}-pred.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    g.figure(img, phrase, pred).save(path)
    console.print(f"figure -> {path}")
