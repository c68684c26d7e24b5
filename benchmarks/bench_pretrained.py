"""The demo's two backbones side by side: VGG16 (synthetic-attn-regression) vs EfficientNet-Lite0.

Measures, interleaved round by round so both see the same machine load: the frozen
backbone's forward at 224 x 224 (feature extraction, images/s) and one training step of
the recipe's heads on cached-size maps (samples/s: forward, loss, backward, Adam). The
weights do not change the cost, so VGG16 runs with random weights and Lite0 with the
packaged ImageNet file. Prints a markdown table; writes nothing.

    python benchmarks/bench_pretrained.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from vgkit.model import build_model, compute_loss
from vgkit.plugins import get_registry
from vgkit.recipe import load_recipe
from vgkit.text import Vocabulary

RECIPES = ("synthetic-attn-regression", "synthetic-lite0")
WORDS = ["the", "red", "square", "left", "of", "blue", "circle", "small", "green", "triangle"]


def setup(name: str):
    """(model, loss, Adam) of recipe `name` on a small vocabulary."""
    registry = get_registry()
    recipe = load_recipe(name, registry=registry)
    vocab = Vocabulary(["<pad>", "<go>", "<eos>", "<unk>", *WORDS])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, loss = build_model(recipe, registry, vocab=vocab)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, loss, torch.optim.Adam(params, lr=recipe.optim.lr)


def extract(model, images: torch.Tensor) -> float:
    """Seconds of one frozen backbone forward."""
    t = time.perf_counter()
    model.backbone(images)
    return time.perf_counter() - t


def train_step(model, loss, opt, B: int) -> float:
    """Seconds of one training step on random maps of the backbone's shape."""
    gen = torch.Generator().manual_seed(0)
    C, S = model.backbone.channels, 224 // model.backbone.stride
    feats = torch.randn(B, C, S, S, generator=gen)
    text = model.tokenize([" ".join(WORDS[i % 10:i % 10 + 4]) for i in range(B)])
    xy = torch.rand(B, 2, generator=gen) * 150
    target = torch.cat([xy, xy + 20 + torch.rand(B, 2, generator=gen) * 50], 1)
    model.train()
    t = time.perf_counter()
    out = model(text, features=feats, image_index=torch.arange(B))
    res = compute_loss(loss, out, target, model.head.box_format, model.spec.input_size)
    opt.zero_grad(set_to_none=True)
    res.total.backward()
    opt.step()
    return time.perf_counter() - t


def main() -> None:
    """Interleaved rounds; median images/s and samples/s per recipe."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images", type=int, default=8, help="images per extraction batch")
    p.add_argument("--batch", type=int, default=20, help="training batch (the recipe's: 20)")
    p.add_argument("--steps", type=int, default=10, help="training steps per round")
    a = p.parse_args()
    torch.manual_seed(0)
    setups = {n: setup(n) for n in RECIPES}
    images = torch.randn(a.images, 3, 224, 224)
    ext: dict[str, list[float]] = {n: [] for n in RECIPES}
    trn: dict[str, list[float]] = {n: [] for n in RECIPES}
    for m, lo, o in setups.values():  # warm-up
        extract(m, images)
        train_step(m, lo, o, a.batch)
    for _ in range(a.rounds):
        for n, (m, lo, o) in setups.items():
            ext[n].append(a.images / extract(m, images))
            trn[n].append(a.steps * a.batch / sum(train_step(m, lo, o, a.batch)
                                                  for _ in range(a.steps)))
    print("| recipe | backbone | V_map | extraction, images/s | training, samples/s |")
    print("|---|---|---|---|---|")
    for n, (m, _, _) in setups.items():
        bb = m.backbone
        print(f"| `{n}` | {bb.model_name} | {bb.channels} x 14 x 14 | "
              f"{statistics.median(ext[n]):.1f} | {statistics.median(trn[n]):.0f} |")


if __name__ == "__main__":
    main()
