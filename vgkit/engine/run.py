"""A trained run as a whole: its folder, its model rebuilt, evaluated on a split or several.

The library side of ``vgkit eval`` and ``vgkit bench`` (and of
:meth:`vgkit.Grounder.evaluate`): the command line only prints what these return.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vgkit.engine.rundir import check_which
from vgkit.errors import VgkitError


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


def _prepared(checkpoint: Path, which: str, dataset: str | None, root: Path | None, device: str,
              progress: bool, cache_dir: Path | None) -> tuple[Any, Any, Any, bool, torch.device]:
    """(model, recipe, bundle, own dataset?, device): a run's model and its data made ready."""
    from vgkit.distributed import DistInfo, device_for
    from vgkit.engine.bundle import DataBundle
    from vgkit.engine.train import load_trained
    from vgkit.plugins import get_registry

    check_which(which)
    dev = device_for(DistInfo(), device)
    registry = get_registry()
    model, recipe, vocab, _ = load_trained(checkpoint, registry, which=which, device=dev)
    own = not dataset or dataset == recipe.data.dataset.name
    recipe = retarget(recipe, registry, dataset, root)
    bundle = DataBundle(recipe, registry, vocab=vocab, progress=progress)
    bundle.attach_model(model, device=dev, dist_info=DistInfo(), workers=recipe.train.workers,
                        cache_dir=str(cache_dir) if cache_dir else None)
    return model, recipe, bundle, own, dev


def evaluate_checkpoint(checkpoint: Path, *, which: str = "best", dataset: str | None = None,
                        root: Path | None = None, split: str | None = None,
                        batch_size: int | None = None, device: str = "auto", progress: bool = True,
                        cache_dir: Path | None = None) -> Evaluated:
    """Rebuild a run's model and data and predict every expression of `split` (default: the
    recipe's ``data.test_split``)."""
    from vgkit.engine.evaluate import predict

    model, recipe, bundle, own, dev = _prepared(checkpoint, which, dataset, root, device,
                                                progress, cache_dir)
    split = split or recipe.data.test_split
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


# splits that are trained on, not reported: left out of ``all``
TRAINING_SPLITS = ("train", "trainval")
# the order papers print splits in; others follow alphabetically
_REPORT_ORDER = ("val", "testA", "testB", "testC", "test")


def report_order(split: str) -> tuple[int, str]:
    """Sort key: the order papers print splits in (val, testA, testB, testC, test), then by name."""
    return (_REPORT_ORDER.index(split) if split in _REPORT_ORDER else len(_REPORT_ORDER), split)


def choose_splits(spec: str | Sequence[str], available: Iterable[str], dataset: str) -> list[str]:
    """The splits `spec` names (``"all"``, ``"val,testA"`` or a list), checked against `available`.

    ``all`` is every split but the training ones, in the order papers report them.
    """
    have = list(available)
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    if not names or any(not n for n in names):
        raise VgkitError(f"splits {spec!r}: an empty split name; dataset {dataset!r} has "
                         f"{', '.join(have) or '(no splits)'}, or give all")
    if "all" in names:
        if len(names) > 1:
            raise VgkitError(f"splits {spec!r}: all stands alone")
        names = sorted((s for s in have if s not in TRAINING_SPLITS), key=report_order)
        if not names:
            raise VgkitError(f"dataset {dataset!r} has no split besides "
                             f"{', '.join(have) or 'none'} to evaluate")
    unknown = [n for n in names if n not in have]
    if unknown:
        raise VgkitError(f"dataset {dataset!r} has no split {unknown[0]!r}; splits: "
                         f"{', '.join(have) or '(empty)'}")
    return list(dict.fromkeys(names))


@dataclass
class SplitsEvaluated:
    """One checkpoint evaluated on several splits in one prediction pass, under several protocols."""

    model: Any
    recipe: Any
    bundle: Any
    splits: list[str]
    protocols: list[Any]  # vgkit.engine.protocols.Protocol, in the order asked
    preds: dict[str, Any]  # split -> Predictions
    scores: dict[str, dict[str, Any]]  # split -> split_scores(): n, scored, unscored, miou, protocols
    own_dataset: bool
    images: int  # distinct images of the pass: each one's maps computed (or read) once
    predicted: int  # distinct (image, phrase) pairs predicted
    seconds: float  # the prediction pass alone
    device: torch.device

    def summary(self) -> dict[str, Any]:
        """The numbers as JSON-ready data: per split n, scored, unscored, miou and each protocol."""
        return {"dataset": self.recipe.data.dataset.name, "splits": self.splits,
                "protocols": {p.name: p.description for p in self.protocols},
                "results": self.scores, "images": self.images, "predicted": self.predicted,
                "seconds": self.seconds, "device": str(self.device)}


def evaluate_splits(checkpoint: Path, splits: str | Sequence[str] = "all", *,
                    protocols: str | Sequence[str] | None = None, which: str = "best",
                    dataset: str | None = None, root: Path | None = None,
                    batch_size: int | None = None, device: str = "auto", progress: bool = True,
                    cache_dir: Path | None = None) -> SplitsEvaluated:
    """Rebuild a run's model and data, predict every split of `splits` in one pass, score each.

    `protocols`: ``"all"``, names (see :data:`vgkit.engine.protocols.PROTOCOLS`), default
    ``iou>=0.5``. Every split's expressions count in its denominator (unscored: failures).
    """
    from vgkit.engine.evaluate import predict_splits, split_scores
    from vgkit.engine.protocols import parse_protocols

    chosen_protocols = parse_protocols(protocols)  # a bad name stops before any work
    model, recipe, bundle, own, dev = _prepared(checkpoint, which, dataset, root, device,
                                                progress, cache_dir)
    names = choose_splits(splits, bundle.index.splits(), recipe.data.dataset.name)
    exprs = {name: bundle.split(name) for name in names}
    tick = time.perf_counter()
    preds, union = predict_splits(model, bundle, exprs,
                                  batch_size=batch_size or recipe.train.eval_batch_size,
                                  device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - tick
    scores = {name: split_scores(preds[name], chosen_protocols) for name in names}
    return SplitsEvaluated(model, recipe, bundle, names, chosen_protocols, preds, scores, own,
                           len(union.image_ids), len(union), seconds, dev)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA peak allocation, else the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process peak RSS"


CONVENTIONS = ("continuous", "inclusive")


def check_convention(convention: str) -> None:
    """One line for an IoU convention other than continuous or inclusive."""
    if convention not in CONVENTIONS:
        raise VgkitError(f"--iou-convention {convention!r}: choose continuous or inclusive")


def _stem(own_dataset: bool, dataset: str, name: str) -> str:
    """A result file's stem: `name`, after the dataset's when it is not the run's own."""
    return name if own_dataset else f"{dataset}-{name}"


def report_evaluation(ev: Evaluated, checkpoint: Path, *, which: str = "best",
                      convention: str = "continuous", errors: bool = False,
                      predictions: Path | None = None, gallery: Path | None = None,
                      gallery_n: int = 24,
                      protocols: Sequence[Any] = ()) -> tuple[dict[str, Any], Path]:
    """Everything ``vgkit eval`` reports on an evaluated split, and the files it writes.

    Computes Acc@0.5, mean IoU, the breakdowns, the phrase-blind baselines and (with
    `errors`) the failure buckets; writes the predictions JSONL (default
    ``RUN/predictions-<split>.jsonl``), the gallery when `gallery` is given, and
    ``RUN/eval-<split>.json`` (``<dataset>-<split>`` when evaluated on another dataset),
    with each of `protocols` (:class:`vgkit.engine.protocols.Protocol`) under ``protocols``.
    Returns that JSON's content and its path.
    """
    from vgkit.engine.baselines import evaluation_baselines
    from vgkit.engine.failures import evaluation_failures
    from vgkit.engine.report import breakdowns, prediction_ious, write_predictions
    from vgkit.engine.rundir import RunDir
    from vgkit.engine.visualize import write_gallery
    from vgkit.fsutil import atomic_write_text

    check_convention(convention)
    conv: Any = convention
    numbers = breakdowns(ev.preds, conv)
    buckets = None
    if errors:
        buckets, numbers["errors"] = evaluation_failures(ev, prediction_ious(ev.preds, conv))
    run = RunDir.of(checkpoint)
    ds = ev.recipe.data.dataset.name
    stem = _stem(ev.own_dataset, ds, ev.split)  # the run's own results apart
    pred_path = write_predictions(ev.preds, predictions or run.predictions(stem), conv, buckets)
    numbers["baselines"] = evaluation_baselines(ev, conv)
    if protocols:
        from vgkit.engine.evaluate import split_scores

        numbers["protocols"] = split_scores(ev.preds, protocols)["protocols"]
    if gallery:
        page = write_gallery(ev.preds, ev.bundle, gallery, n=gallery_n, grid=ev.model.spec.grid,
                             convention=conv, buckets=buckets)
        numbers["gallery"] = str(page)
        if errors:  # which gallery figure shows which failure
            numbers["errors"]["gallery_index"] = str(page.with_name("index.json"))
    summary = {"checkpoint": str(checkpoint), "which": which, "recipe": ev.recipe.name,
               "dataset": ds, "root": str(ev.bundle.root), "split": ev.split,
               "boxes": "xyxy original pixels", **numbers, "iou_convention": convention,
               "predictions": str(pred_path), "seconds": ev.seconds, "device": str(ev.device)}
    out = run.eval_summary(stem)
    atomic_write_text(out, json.dumps(summary, indent=2) + "\n")
    return summary, out


def report_splits(se: SplitsEvaluated, checkpoint: Path, *,
                  which: str = "best") -> tuple[dict[str, Any], Path]:
    """Write each split's predictions JSONL and ``RUN/eval-splits-<a>+<b>....json``.

    The JSON is :meth:`SplitsEvaluated.summary` with the run, root and file paths;
    evaluated on another dataset than the run's, the file names start with its name.
    Returns that JSON's content and its path.
    """
    from vgkit.engine.report import write_predictions
    from vgkit.engine.rundir import RunDir
    from vgkit.fsutil import atomic_write_text

    run = RunDir.of(checkpoint)
    ds = se.recipe.data.dataset.name
    paths = {name: str(write_predictions(se.preds[name],
                                         run.predictions(_stem(se.own_dataset, ds, name))))
             for name in se.splits}
    summary = {"checkpoint": str(checkpoint), "which": which, "recipe": se.recipe.name,
               "root": str(se.bundle.root), "boxes": "xyxy original pixels", **se.summary(),
               "predictions": paths}
    out = run.eval_summary(_stem(se.own_dataset, ds, f"splits-{'+'.join(se.splits)}"))
    atomic_write_text(out, json.dumps(summary, indent=2) + "\n")
    return summary, out
