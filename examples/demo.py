"""Demo of what vgkit can do today: the paper's model on the synthetic dataset.

The training engine (``vgkit train``) is not built yet, so this script generates a
small synthetic dataset, builds the reference model from the built-in recipe,
runs the frozen VGG16 once over the images, and takes a few Adam steps of the
paper's heads on those features, printing the loss. It says so when it ends.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
from PIL import Image

from vgkit.boxes import iou
from vgkit.data.synth import ensure_synthetic
from vgkit.model import build_model, compute_loss
from vgkit.recipe import load_recipe
from vgkit.text import Vocabulary

ROOT = Path("data/synthetic-demo")
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def load_image(path: Path, size: int = 224) -> torch.Tensor:
    """Read, stretch to size x size, ImageNet-normalise."""
    img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return ((x.float() / 255 - MEAN) / STD).permute(2, 0, 1)


def main() -> None:
    """Generate data, build the model, train the heads briefly, report."""
    torch.manual_seed(0)
    index = ensure_synthetic(ROOT, n_images=60, seed=0)
    train = [r for r in index if r.split == "train"]
    vocab = Vocabulary.build([r.tokens for r in train])
    recipe = load_recipe("refit-attn-regression", ["model.attention.0.dropout=0.1",
                                                   "model.attention.1.dropout=0.1",
                                                   "model.head.dropout=0.1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random VGG16 weights: this is a smoke demo
        model, loss = build_model(recipe, vocab=vocab)
    print(f"built {recipe.name}: {sum(p.numel() for p in model.parameters() if p.requires_grad):,} "
          f"trainable parameters, vocabulary of {len(vocab)} tokens")

    image_ids = sorted({r.image_id for r in train})
    t0 = time.time()
    with torch.no_grad():
        images = torch.stack([load_image(ROOT / f"images/{i}.jpg") for i in image_ids])
        feats = torch.cat([model.encode_image(images[i:i + 16]) for i in range(0, len(images), 16)])
    print(f"VGG16 conv5_3 of {len(image_ids)} images in {time.time() - t0:.1f}s "
          f"(computed once: the backbone is frozen)")
    feats = feats / feats.std().clamp(min=1e-6)
    where = {i: k for k, i in enumerate(image_ids)}
    image_index = torch.tensor([where[r.image_id] for r in train])
    scale = torch.tensor([224 / r.width for r in train])[:, None].repeat(1, 4)
    scale[:, 1::2] = torch.tensor([224 / r.height for r in train])[:, None]
    target = torch.tensor([r.box for r in train]) * scale
    text = model.tokenize([r.phrase for r in train])
    model.head.init_output_bias(_mean_xywh(target))  # a departure the GUIDE found essential
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for step in range(1, 61):
        idx = torch.randint(0, len(train), (20,))
        sub = type(text)(text.ids[idx], text.mask[idx])
        out = model(sub, features=feats, image_index=image_index[idx])
        res = compute_loss(loss, out, target[idx], model.head.box_format, (224, 224))
        opt.zero_grad()
        res.total.backward()
        opt.step()
        if step % 20 == 0:
            model.eval()
            with torch.no_grad():
                all_out = model(text, features=feats, image_index=image_index)
            acc = (iou(all_out.boxes, target) >= 0.5).float().mean().item()
            model.train()
            print(f"step {step:3d}  loss {res.total.item():.3f}  train Acc@0.5 {acc:.1%}")
    print("This is a smoke demo of the model on a tiny dataset; the training engine "
          "(vgkit train / eval) is not built yet.")


def _mean_xywh(xyxy: torch.Tensor) -> torch.Tensor:
    return torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1).mean(0)


if __name__ == "__main__":
    main()
