"""Baselines a grounding model has to beat, computed from the data alone.

- **whole image**: the box (0, 0, 1, 1) in fractions of the image, for every expression;
- **best constant box**: one box, in fractions of the image, chosen on the training
  split to maximise Acc@0.5 (a grid over centre, width and height), applied to
  every expression of the evaluated split;
- **phrase-blind detector**: finds every object of the image perfectly but ignores
  the phrase, picking one at random. Its *expected* Acc@0.5 is computed exactly:
  for each expression, the share of the image's objects whose box has IoU >= 0.5
  with the target. Objects are the scene's objects where the dataset records them
  (synthetic ``scenes.jsonl``), else every distinct annotated box of that image.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vgkit.data.index import DatasetIndex
from vgkit.engine.bundle import ExprSet
from vgkit.engine.evaluate import IoUConvention, gt_boxes, ious


def _relative(exprs: ExprSet) -> Tensor:
    """Ground-truth boxes as fractions of their image [n, 4]."""
    wh = exprs.sizes.repeat(1, 2)
    return gt_boxes(exprs) / wh


def best_constant_box(train: ExprSet, steps: int = 12) -> Tensor:
    """The (x1, y1, x2, y2) fraction box with the best Acc@0.5 on `train`."""
    gt = _relative(train)
    grid = torch.linspace(0.0, 1.0, steps + 1)
    cands = [(cx, cy, w, h) for cx, cy, w, h in itertools.product(grid[1:-1], grid[1:-1], grid[1:], grid[1:])
             if cx - w / 2 >= 0 and cx + w / 2 <= 1 and cy - h / 2 >= 0 and cy + h / 2 <= 1]
    c = torch.tensor(cands)
    boxes = torch.stack((c[:, 0] - c[:, 2] / 2, c[:, 1] - c[:, 3] / 2,
                         c[:, 0] + c[:, 2] / 2, c[:, 1] + c[:, 3] / 2), 1)
    best, best_acc = boxes[0], -1.0
    for chunk in boxes.split(256):  # [K, 4] x [n, 4] -> [K, n] IoUs, in pieces for memory
        acc = (ious(chunk[:, None], gt[None]) >= 0.5).float().mean(1)
        k = int(acc.argmax())
        if acc[k] > best_acc:
            best, best_acc = chunk[k], float(acc[k])
    return best


WHOLE_IMAGE = torch.tensor([0.0, 0.0, 1.0, 1.0])  # xyxy fractions


def constant_box_scores(box: Tensor, exprs: ExprSet,
                        convention: IoUConvention = "continuous") -> dict[str, float]:
    """Acc@0.5 and mean IoU of predicting `box` (fractions of the image) for every expression."""
    v = ious(box[None] * exprs.sizes.repeat(1, 2), gt_boxes(exprs), convention)
    return {"acc@0.5": (v >= 0.5).float().mean().item(), "miou": v.mean().item()}


def constant_box_accuracy(box: Tensor, exprs: ExprSet, convention: IoUConvention = "continuous") -> float:
    """Acc@0.5 of predicting `box` (fractions of the image) for every expression."""
    return constant_box_scores(box, exprs, convention)["acc@0.5"]


def _objects_by_image(index: DatasetIndex, root: Path | None) -> dict[str, Tensor]:
    scenes = root / "scenes.jsonl" if root is not None else None
    if scenes is not None and scenes.is_file():
        from vgkit.data.synth import load_scenes

        return {i: torch.tensor([o["box"] for o in s["objects"]], dtype=torch.float32)
                for i, s in load_scenes(root).items()}
    by_image: dict[str, set[tuple[float, ...]]] = defaultdict(set)
    for r in index:
        by_image[r.image_id].add(tuple(r.box))
    return {i: torch.tensor(sorted(b), dtype=torch.float32) for i, b in by_image.items()}


def phrase_blind_accuracy(index: DatasetIndex, exprs: ExprSet, root: Path | None = None,
                          convention: IoUConvention = "continuous") -> float:
    """Expected Acc@0.5 of a perfect detector that picks one of the image's objects at random."""
    objects = _objects_by_image(index, root)
    gt = gt_boxes(exprs)
    total = 0.0
    for k, r in enumerate(exprs.records):
        objs = objects[r.image_id]
        total += (ious(objs, gt[k].expand_as(objs), convention) >= 0.5).float().mean().item()
    return total / max(len(exprs), 1)


def evaluation_baselines(ev: Any, convention: IoUConvention = "continuous") -> dict[str, Any]:
    """The three baselines on an evaluated split (:class:`vgkit.engine.run.Evaluated`).

    The constant box is fit on the recipe's training split and applied to the
    evaluated split; the numbers are what ``vgkit eval`` prints beside its own.
    """
    train_split = ev.recipe.data.train_split
    box = best_constant_box(ev.bundle.split(train_split))
    exprs = ev.preds.exprs
    whole = constant_box_scores(WHOLE_IMAGE, exprs, convention)
    const = constant_box_scores(box, exprs, convention)
    return {"whole_image": whole["acc@0.5"], "whole_image_miou": whole["miou"],
            "constant_box": const["acc@0.5"], "constant_box_miou": const["miou"],
            "constant_box_xyxy_fraction": [round(v, 4) for v in box.tolist()],
            "constant_box_fit_on": train_split,
            "phrase_blind": phrase_blind_accuracy(ev.bundle.index, exprs, ev.bundle.root,
                                                  convention)}
