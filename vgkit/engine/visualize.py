"""The figure of one expression (image, boxes, attention, words), and an HTML gallery of many.

Left: the ORIGINAL image with the ground-truth box (red) and the predicted box
(yellow). Right: the image attention alpha_I over the same image as a heat
overlay (red high, blue low). Below: the phrase, each word on a chip coloured
by its text attention alpha_T. Models without attention (ablations) get the
left panel and plain words. PIL only.

alpha_I lives on the feature grid, which covers the network INPUT; the map is
cut to the part of the input the original image occupies (all of it when
stretched, the middle when letterboxed) and resized onto the original image.
"""

from __future__ import annotations

import html
import json
import math
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from vgkit.data.images import BadImageError, ImageTransform, read_image
from vgkit.data.validate import image_file
from vgkit.engine.bundle import DataBundle
from vgkit.engine.evaluate import IoUConvention, Predictions
from vgkit.engine.report import THRESHOLD, prediction_ious
from vgkit.errors import VgkitError
from vgkit.fsutil import atomic_write_text
from vgkit.text import tokenize

GT_COLOUR = (230, 30, 30)
PRED_COLOUR = (255, 220, 0)
BOX_WIDTH = 3
_STOPS = ((0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0))
GAP = 12


def heat_colour(t: float) -> tuple[int, int, int]:
    """Colour of `t` in [0, 1]: blue (low) -> cyan -> green -> yellow -> red (high)."""
    t = min(max(t, 0.0), 1.0) * (len(_STOPS) - 1)
    k = min(int(t), len(_STOPS) - 2)
    f = t - k
    a, b = _STOPS[k], _STOPS[k + 1]
    return tuple(round(a[c] + (b[c] - a[c]) * f) for c in range(3))  # type: ignore[return-value]


_PALETTE = [c for i in range(256) for c in heat_colour(i / 255)]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def infer_grid(n_regions: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) feature grid with h * w = `n_regions` and the input's (H, W) aspect."""
    H, W = input_size
    s = math.sqrt(H * W / n_regions)
    h, w = round(H / s), round(W / s)
    if h * w != n_regions:
        raise VgkitError(f"cannot lay {n_regions} attention weights on a grid of aspect {H}x{W}; "
                         "pass grid=(h, w)")
    return h, w


def attention_image(alpha_I: Tensor, grid: tuple[int, int], transform: ImageTransform,
                    width: int, height: int, size: tuple[int, int]) -> Image.Image:
    """alpha_I [h*w] -> an 'L' image of `size` (W, H) over the original image, 255 = highest."""
    h, w = grid
    a = alpha_I.detach().float().reshape(h, w).cpu().numpy().astype(np.float32)
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
    sx, sy, ox, oy = transform.geometry(width, height)
    H, W = transform.size
    cx, cy = w / W, h / H  # grid cells per input pixel
    # the original image's footprint in the input, in grid units
    box = (ox * cx, oy * cy, (ox + width * sx) * cx, (oy + height * sy) * cy)
    up = Image.fromarray(a).resize(size, Image.BILINEAR, box=box)
    return Image.fromarray((np.asarray(up).clip(0, 1) * 255).round().astype(np.uint8))


def heat_overlay(image: Image.Image, attention: Image.Image, opacity: float = 0.55) -> Image.Image:
    """`image` blended with the heat colours of an 'L' attention image."""
    heat = attention.copy()
    heat.putpalette(_PALETTE)
    return Image.blend(image.convert("RGB"), heat.convert("RGB"), opacity)


def words_for(phrase: str, n: int) -> list[str] | None:
    """The words alpha_T's `n` weights refer to (the vocabulary tokenizer's), or None."""
    for words in (tokenize(phrase)[:n], phrase.split()[:n]):
        if len(words) == n:
            return words
    return ["<unk>"] if n == 1 and not phrase.strip() else None


def _scaled_box(box: Sequence[float], scale: float) -> list[float]:
    return [float(c) * scale for c in box]


def _draw_box(draw: ImageDraw.ImageDraw, box: Sequence[float], colour: tuple[int, int, int],
              size: tuple[int, int]) -> None:
    x1, y1, x2, y2 = box
    # keep the outline inside the canvas so boxes at the border stay visible
    x1, y1 = min(max(x1, 0), size[0] - 1), min(max(y1, 0), size[1] - 1)
    x2, y2 = min(max(x2, x1 + 1), size[0] - 1), min(max(y2, y1 + 1), size[1] - 1)
    draw.rectangle((x1, y1, x2, y2), outline=colour, width=BOX_WIDTH)


def _word_chips(words: list[str], weights: list[float] | None, width: int,
                font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> Image.Image:
    """Words laid out left to right (wrapping), on heat-coloured chips when weighted."""
    pad, line_h = 5, font.getbbox("Hg")[3] + 12
    lo, hi = (min(weights), max(weights)) if weights else (0.0, 1.0)
    places, x, y = [], GAP, 0
    for k, word in enumerate(words):
        tw = int(font.getlength(word)) + 2 * pad
        if x + tw > width - GAP and x > GAP:
            x, y = GAP, y + line_h
        places.append((k, word, x, y, tw))
        x += tw + 6
    canvas = Image.new("RGB", (width, y + line_h + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for k, word, x, y, tw in places:
        if weights is None:
            draw.text((x + pad, y + 4), word, fill="black", font=font)
            continue
        t = 1.0 if hi - lo < 1e-12 else (weights[k] - lo) / (hi - lo)
        bg = heat_colour(t)
        dark = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2] < 140
        draw.rounded_rectangle((x, y, x + tw, y + line_h - 4), radius=5, fill=bg)
        draw.text((x + pad, y + 4), word, fill="white" if dark else "black", font=font)
    return canvas


def render_figure(image: Image.Image, phrase: str, pred_box: Sequence[float], *,
                  gt_box: Sequence[float] | None = None, alpha_I: Tensor | None = None,
                  grid: tuple[int, int] | None = None, transform: ImageTransform | None = None,
                  alpha_T: Tensor | None = None, iou: float | None = None,
                  long_side: int = 360) -> Image.Image:
    """The figure of one expression; boxes are xyxy in ORIGINAL pixels."""
    W0, H0 = image.size
    scale = long_side / max(W0, H0)
    size = (max(1, round(W0 * scale)), max(1, round(H0 * scale)))
    shown = image.convert("RGB").resize(size, Image.BILINEAR)
    left = shown.copy()
    draw = ImageDraw.Draw(left)
    if gt_box is not None:
        _draw_box(draw, _scaled_box(gt_box, scale), GT_COLOUR, size)
    _draw_box(draw, _scaled_box(pred_box, scale), PRED_COLOUR, size)
    panels = [left]
    if alpha_I is not None:
        if transform is None:
            raise VgkitError("render_figure: alpha_I needs the image transform")
        g = grid or infer_grid(alpha_I.numel(), transform.size)
        panels.append(heat_overlay(shown, attention_image(alpha_I, g, transform, W0, H0, size)))

    font, small = _font(18), _font(13)
    legend = ["ground truth" if gt_box is not None else "", "prediction"]
    caption = []
    if iou is not None:
        caption.append(f"IoU {iou:.2f} ({'correct' if iou >= THRESHOLD else 'wrong'} at 0.5)")
    caption.append("attention: blue low, red high" if alpha_I is not None or alpha_T is not None
                   else "no attention maps (box only)")
    if alpha_I is not None and float(alpha_I.max() - alpha_I.min()) < 1e-12:
        # a constant map (e.g. a dead relu) would otherwise look like a confident "low everywhere"
        caption.append(f"image attention constant ({float(alpha_I.max()):.3g})")
    cap_text = "   ".join(caption)
    width = max(sum(p.width for p in panels) + GAP * (len(panels) + 1), 420,
                int(small.getlength(cap_text)) + 2 * GAP)
    weights = alpha_T.detach().float().cpu().tolist() if alpha_T is not None else None
    words = words_for(phrase, len(weights)) if weights is not None else None
    if words is None:
        words, weights = tokenize(phrase) or [phrase], None
    chips = _word_chips(words, weights, width, font)

    cap_h = 44  # legend line, caption line
    height = GAP + size[1] + GAP + cap_h + chips.height + GAP
    fig = Image.new("RGB", (width, height), "white")
    x = GAP
    for p in panels:
        fig.paste(p, (x, GAP))
        x += p.width + GAP
    d = ImageDraw.Draw(fig)
    y, x = GAP + size[1] + 6, GAP
    for label, colour in zip(legend, (GT_COLOUR, PRED_COLOUR), strict=True):
        if not label:
            continue
        d.rectangle((x, y + 3, x + 12, y + 15), fill=colour, outline="black")
        d.text((x + 18, y + 1), label, fill="black", font=small)
        x += 18 + int(small.getlength(label)) + 14
    d.text((GAP, y + 21), cap_text, fill=(60, 60, 60), font=small)
    fig.paste(chips, (0, GAP + size[1] + GAP + cap_h))
    return fig


def figure_for(preds: Predictions, i: int, bundle: DataBundle, *,
               grid: tuple[int, int] | None = None,
               convention: IoUConvention = "continuous") -> Image.Image:
    """The figure of expression `i` of `preds` (its image read from the bundle's dataset root)."""
    r = preds.exprs.records[i]
    iou = float(prediction_ious(preds, convention)[i])
    return _figure(preds, i, bundle, _read(bundle, r.image_path), iou, grid)


def _read(bundle: DataBundle, image_path: str) -> Image.Image:
    try:
        return read_image(image_file(bundle.root, image_path))
    except BadImageError as exc:  # a user's data problem: one line, not a traceback
        raise VgkitError(str(exc)) from None


def _figure(preds: Predictions, i: int, bundle: DataBundle, image: Image.Image, iou: float,
            grid: tuple[int, int] | None) -> Image.Image:
    r = preds.exprs.records[i]
    return render_figure(image, r.phrase, preds.boxes[i].tolist(), gt_box=r.box,
                         alpha_I=None if preds.alpha_I is None else preds.alpha_I[i],
                         alpha_T=None if preds.alpha_T is None else preds.alpha_T[i],
                         grid=grid, transform=bundle.transform, iou=iou)


def _sample(indices: list[int], k: int, rng: random.Random) -> list[int]:
    return sorted(rng.sample(indices, min(k, len(indices))))


def _spread(groups: dict[str, list[int]], k: int, rng: random.Random) -> dict[str, list[int]]:
    """`k` of the indices, taken round-robin over the groups so small groups are shown too."""
    pools = {g: rng.sample(idx, len(idx)) for g, idx in groups.items()}
    taken: dict[str, list[int]] = {g: [] for g in groups}
    while k > 0 and any(pools.values()):
        for g, pool in pools.items():
            if pool and k > 0:
                taken[g].append(pool.pop())
                k -= 1
    return {g: sorted(v) for g, v in taken.items()}


def write_gallery(preds: Predictions, bundle: DataBundle, out_dir: str | os.PathLike[str],
                  n: int = 24, seed: int = 0, *, grid: tuple[int, int] | None = None,
                  convention: IoUConvention = "continuous",
                  buckets: Sequence[str | None] | None = None) -> Path:
    """Figure PNGs of a seeded sample of correct and wrong predictions, index.html and index.json.

    With `buckets` (a failure bucket per expression, see vgkit.engine.failures) the wrong
    ones are sampled across the buckets and grouped under one heading each.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    v = prediction_ious(preds, convention).tolist()
    right = [i for i, x in enumerate(v) if x >= THRESHOLD]
    wrong = [i for i, x in enumerate(v) if x < THRESHOLD]
    rng = random.Random(seed)
    # half each; a side with too few leaves its share to the other
    k_right = min(len(right), max(n // 2, n - len(wrong)))
    k_wrong = min(len(wrong), n - k_right)
    groups: dict[str, list[int]] = {"correct": _sample(right, k_right, rng)}
    totals = {"correct": len(right)}
    if buckets is None:
        groups["wrong"], totals["wrong"] = _sample(wrong, k_wrong, rng), len(wrong)
    else:
        from vgkit.engine.failures import BUCKETS

        by_bucket: dict[str | None, list[int]] = {}
        for i in wrong:
            by_bucket.setdefault(buckets[i], []).append(i)
        order = sorted(by_bucket, key=lambda b: BUCKETS.index(b) if b in BUCKETS else len(BUCKETS))
        by_group = {f"wrong: {b}": by_bucket[b] for b in order}  # in the order of precedence
        groups.update(_spread(by_group, k_wrong, rng))
        totals.update({g: len(idx) for g, idx in by_group.items()})
    images: dict[str, Image.Image] = {}
    sections, listing = [], []
    for label, idx in groups.items():
        cells = []
        for i in idx:
            r = preds.exprs.records[i]
            if r.image_path not in images:
                images[r.image_path] = _read(bundle, r.image_path)
            kind = "correct" if v[i] >= THRESHOLD else "wrong"
            name = f"{kind}-{i:06d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', r.image_id)}.png"
            _figure(preds, i, bundle, images[r.image_path], v[i], grid).save(out / name)
            cells.append(f'<figure><a href="{name}"><img src="{name}" loading="lazy"></a>'
                         f"<figcaption>&ldquo;{html.escape(r.phrase)}&rdquo;<br>IoU {v[i]:.3f} "
                         f"&middot; {html.escape(r.image_id)}</figcaption></figure>")
            listing.append({"index": i, "file": name, "image_id": r.image_id, "phrase": r.phrase,
                            "iou": v[i], "correct": kind == "correct",
                            "bucket": None if buckets is None else buckets[i]})
        sections.append(f"<h2>{html.escape(label)} ({len(idx)} shown of {totals[label]})</h2>\n"
                        f"<div class=grid>{''.join(cells) or '<p>none</p>'}</div>")
    title = f"vgkit gallery: {len(v)} expressions, Acc@0.5 {len(right) / max(len(v), 1):.2%}"
    page = (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>\n"
            "<style>body{font-family:sans-serif;margin:1em}.grid{display:flex;flex-wrap:wrap;"
            "gap:12px}figure{margin:0;width:420px}img{max-width:100%}"
            "figcaption{font-size:14px}</style>\n"
            f"<h1>{html.escape(title)}</h1><p>IoU convention: {convention}. Red box: ground "
            "truth; yellow: prediction; attention red high, blue low.</p>\n"
            + "\n".join(sections) + "\n")
    atomic_write_text(out / "index.html", page)
    atomic_write_text(out / "index.json", json.dumps(listing, indent=1) + "\n")
    return out / "index.html"

