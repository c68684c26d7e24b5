"""What the frozen backbone's maps know about each synthetic object: linear probes.

The paper-shaped synthetic recipes ground phrases through a RANDOM-init VGG16 (no
weights can be downloaded), the `-lite0` ones through ImageNet EfficientNet-Lite0. This
script asks how much of each attribute a phrase can name (shape, colour, size) a linear
classifier can read off the cached maps (VGG16's conv5_3, or Lite0's), at the cell under
the object's centre and averaged over the cells its box covers, trained on the train
split's objects and scored on the test split's. Where a probe is far below
100%, phrases that name that attribute must be grounded on features that hardly tell
its values apart; where it is near 100%, the limit lies in the heads, not the maps.

    .venv/bin/python benchmarks/probe_synthetic_features.py --root data/synthetic-4k

The root needs its feature cache (`vgkit features extract`, or any training run of a
synthetic recipe on it). Prints a Markdown table and writes it to RESULTS.md
(between `<!-- probe_synthetic_features:start -->` and `...:end -->`); `--no-write`
prints only.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from common import append_results, machine, matmul_gflops, md_table, section

ATTRIBUTES = ("shape", "colour", "size")


def load_objects(root: Path) -> tuple[list[dict], dict[str, str]]:
    """Every object of every scene (with its image's size), and each image's split."""
    split = {}
    for line in (root / "records.jsonl").open():
        r = json.loads(line)
        split[r["image_id"]] = r["split"]
    objects = []
    for line in (root / "scenes.jsonl").open():
        s = json.loads(line)
        for o in s["objects"]:
            objects.append({**o, "image_id": s["image_id"], "W": s["width"], "H": s["height"]})
    return objects, split


def open_cache(root: Path, name: str | None):
    """The dataset's feature cache (the only one under root/features, or `name`)."""
    from vgkit.data.features import FeatureCache

    dirs = sorted(p for p in (root / "features").glob("*") if (p / "manifest.json").is_file())
    if name:
        dirs = [d for d in dirs if d.name == name]
    if len(dirs) != 1:
        raise SystemExit(f"{root / 'features'}: expected one feature cache, found "
                         f"{[d.name for d in dirs]}; pass --cache NAME")
    return FeatureCache.open(dirs[0])


def map_features(cache, objects: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(centre cell, box-mean) feature of each object, [n, C] float32 each."""
    rows = cache.rows([o["image_id"] for o in objects]).numpy()
    _, _, h, w = cache.features.shape
    centre, mean = [], []
    for o, r in zip(objects, rows, strict=True):
        fmap = np.asarray(cache.features[r], dtype=np.float32)  # C, h, w
        x1, y1, x2, y2 = o["box"]
        sx, sy = w / o["W"], h / o["H"]
        cx = min(int((x1 + x2) / 2 * sx), w - 1)
        cy = min(int((y1 + y2) / 2 * sy), h - 1)
        centre.append(fmap[:, cy, cx])
        c1, c2 = int(x1 * sx), max(int(np.ceil(x2 * sx)), int(x1 * sx) + 1)
        r1, r2 = int(y1 * sy), max(int(np.ceil(y2 * sy)), int(y1 * sy) + 1)
        mean.append(fmap[:, r1:r2, c1:c2].mean(axis=(1, 2)))
    return np.stack(centre), np.stack(mean)


def probe(x: np.ndarray, labels: list[str], train: np.ndarray, *, steps: int = 300,
          weight_decay: float = 1e-3) -> tuple[float, float]:
    """Multinomial logistic regression (full-batch L-BFGS) on standardised x: (train, test) acc."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(v) for v in labels])
    xt = torch.from_numpy(x)
    mu, sd = xt[train].mean(0), xt[train].std(0) + 1e-6
    xt = (xt - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], len(classes))
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=steps, line_search_fn="strong_wolfe")
    tr = torch.from_numpy(train)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt[tr]), y[tr])
        loss = loss + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        hit = (lin(xt).argmax(1) == y).numpy()
    return float(hit[train].mean()), float(hit[~train].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path("data/synthetic-4k"))
    ap.add_argument("--cache", default=None, help="feature cache directory name under root/features")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()

    objects, split = load_objects(args.root)
    keep = [o for o in objects if split.get(o["image_id"]) in ("train", "test")]
    train = np.array([split[o["image_id"]] == "train" for o in keep])
    cache = open_cache(args.root, args.cache)
    centre, box_mean = map_features(cache, keep)
    maps = "conv5_3" if cache.manifest["spec"]["backbone"]["model"] == "vgg16" else "maps"
    inputs = {f"{maps}, centre cell": centre, f"{maps}, mean over the box": box_mean}
    rows = []
    for attr in ATTRIBUTES:
        labels = [o[attr] for o in keep]
        test_counts = Counter(v for v, t in zip(labels, train, strict=True) if not t)
        chance = max(test_counts.values()) / sum(test_counts.values())
        for name, x in inputs.items():
            tr_acc, te_acc = probe(x, labels, train)
            rows.append([attr, len(set(labels)), name, f"{tr_acc:.1%}", f"{te_acc:.1%}",
                         f"{chance:.1%}"])
            print(rows[-1], flush=True)
    backbone = cache.manifest["spec"]["backbone"]
    body = (f"Dataset `{args.root}`: {int(train.sum()):,} train and {int((~train).sum()):,} test "
            f"objects; cache `{cache.directory.name}` (backbone {backbone['model']}, weights "
            f"sha256 {backbone.get('weights_sha256', '?')[:12]}). Linear probe: multinomial "
            "logistic regression on standardised inputs, L-BFGS, weight decay 1e-3.\n\n"
            + md_table(["attribute", "classes", "input", "train acc", "test acc",
                        "majority class (test)"], rows))
    md = section("Linear probes of the synthetic feature cache", machine(matmul_gflops()), body)
    print(md)
    if not args.no_write:
        append_results("probe_synthetic_features", md)


if __name__ == "__main__":
    main()
