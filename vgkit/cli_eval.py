"""``vgkit eval``, ``vgkit bench`` and ``vgkit predict``: a trained run on a split, published numbers, one image."""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import typer
from rich.table import Table

from vgkit.cli_common import console, styled, user_errors
from vgkit.errors import VgkitError

CONVENTIONS = ("continuous", "inclusive")
_CONVENTION_NOTE = {"continuous": "continuous pixels (w = x2 - x1)",
                    "inclusive": "inclusive whole pixels, Hu et al. (w = x2 - x1 + 1)"}


@dataclass
class Evaluated:
    """One checkpoint evaluated on one split."""

    model: Any
    recipe: Any
    bundle: Any
    preds: Any
    split: str
    own_dataset: bool  # the dataset the run was trained on (no --dataset to another)
    seconds: float  # the predict call alone
    device: torch.device


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; a clear error for an unusable device."""
    from vgkit.distributed import DistInfo, device_for

    return device_for(DistInfo(), requested)


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory of a run directory or of a checkpoint file inside one."""
    return checkpoint.parent.parent if checkpoint.is_file() else checkpoint


def retarget(recipe: Any, registry: Any, dataset: str | None, root: Path | None) -> Any:
    """The recipe evaluated on another dataset and/or root (vocabulary stays the checkpoint's)."""
    if not dataset and not root:
        return recipe
    from vgkit.recipe import validate_recipe

    data = recipe.model_dump(mode="json")
    if dataset and dataset != recipe.data.dataset.name:
        # another dataset's options and root do not carry over
        data["data"]["dataset"], data["data"]["root"] = {"name": dataset}, None
    if root:
        data["data"]["root"] = str(root)
    return validate_recipe(data, registry, source="--dataset/--root")


def evaluate_checkpoint(checkpoint: Path, *, which: str = "best", dataset: str | None = None,
                        root: Path | None = None, split: str = "test", batch_size: int | None = None,
                        device: str = "auto", progress: bool = True,
                        cache_dir: Path | None = None) -> Evaluated:
    """Rebuild a run's model and data and predict every expression of `split`."""
    from vgkit.distributed import DistInfo
    from vgkit.engine.data import DataBundle
    from vgkit.engine.evaluate import predict
    from vgkit.engine.train import load_trained
    from vgkit.plugins import get_registry

    if which not in ("best", "last"):
        raise VgkitError(f"--which {which!r}: choose best or last")
    dev = resolve_device(device)
    registry = get_registry()
    model, recipe, vocab, _ = load_trained(checkpoint, registry, which=which, device=dev)
    own = not dataset or dataset == recipe.data.dataset.name
    recipe = retarget(recipe, registry, dataset, root)
    bundle = DataBundle(recipe, registry, vocab=vocab, progress=progress)
    if model.blind:
        bundle.text_only()
    elif model.backbone.frozen:
        bundle.attach_cache(model.backbone, device=dev, dist_info=DistInfo(),
                            workers=recipe.train.workers,
                            cache_dir=str(cache_dir) if cache_dir else None)
    exprs = bundle.split(split)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    tick = time.perf_counter()
    preds = predict(model, bundle, exprs, batch_size=batch_size or recipe.train.eval_batch_size,
                    device=dev, keep_attention=True)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return Evaluated(model, recipe, bundle, preds, split, own, time.perf_counter() - tick, dev)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA peak allocation, else the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process peak RSS"


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
    out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
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
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(_markdown(reference, rows, split), encoding="utf-8")
        console.print(f"markdown -> {markdown}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"split": split, "published": reference, "runs": rows},
                                       indent=2) + "\n", encoding="utf-8")
        console.print(f"json -> {json_out}")


def check_phrase(model: Any, phrase: str) -> None:
    """Refuse a phrase with no words; warn, naming them, when none of its words is known."""
    import warnings

    from vgkit.text import tokenize

    tokens = tokenize(phrase)
    if not tokens:
        raise VgkitError(f"the phrase {phrase!r} has no words: give the expression to ground")
    vocab = getattr(model.text_encoder, "vocab", None)  # encoders with their own tokenizer have none
    if vocab is not None and not any(t in vocab for t in tokens):
        warnings.warn(f"no word of {phrase!r} is in the model's vocabulary "
                      f"({', '.join(dict.fromkeys(tokens))}): the box ignores the phrase",
                      stacklevel=2)


def ground_image(model: Any, transform: Any, image: Any, phrase: str,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One phrase on one PIL image, backbone included: (box xyxy original px, alpha_I, alpha_T)."""
    check_phrase(model, phrase)
    x = transform(image)[None].to(device)
    text = model.tokenize([phrase]).to(device)
    amp = device.type == "cuda"  # the same precision as evaluation
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(text, images=x)
    w, h = torch.tensor([float(image.size[0])]), torch.tensor([float(image.size[1])])
    box = transform.box_to_original(out.boxes.float().cpu(), w, h)[0]
    s = out.state
    alpha_I = None if s.alpha_I is None else s.alpha_I[0].float().cpu()
    alpha_T = None if s.alpha_T is None else s.alpha_T[0].float().cpu()[text.mask[0].cpu()]
    return box, alpha_I, alpha_T


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
    from vgkit.data.images import ImageTransform, read_image
    from vgkit.engine.train import load_trained
    from vgkit.engine.visualize import render_figure
    from vgkit.plugins import get_registry

    if which not in ("best", "last"):
        raise VgkitError(f"--which {which!r}: choose best or last")
    # a user's photo is grounded as they see it: its EXIF orientation applied (docs/data.md)
    img = read_image(image, upright=True)
    dev = resolve_device(device)
    model, recipe, _, _ = load_trained(checkpoint, get_registry(), which=which, device=dev)
    transform = ImageTransform(tuple(recipe.data.image_size), recipe.data.resize)  # type: ignore[arg-type]
    box, alpha_I, alpha_T = ground_image(model, transform, img, phrase, dev)
    x1, y1, x2, y2 = box.tolist()
    console.print(f"{phrase!r} in {image} ({img.size[0]}x{img.size[1]}), original pixels:")
    console.print(f"  x1 y1 x2 y2: {x1:.1f} {y1:.1f} {x2:.1f} {y2:.1f}")
    console.print(f"  x y w h:     {x1:.1f} {y1:.1f} {x2 - x1:.1f} {y2 - y1:.1f}")
    path = out or Path.cwd() / f"{image.stem}-pred.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    render_figure(img, phrase, box.tolist(), alpha_I=alpha_I, alpha_T=alpha_T,
                  grid=model.spec.grid, transform=transform).save(path)
    console.print(f"figure -> {path}")
