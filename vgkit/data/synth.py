"""A synthetic referring-expression dataset that runs anywhere: vgkit's embedded default.

Scenes of 3-6 coloured shapes on a cluttered background, each described by
attribute, position and relation expressions that refer to exactly one object
(see :mod:`vgkit.data.synth_lang`). The dataset is written to disk like a real
one (``images/<id>.jpg`` plus the index) and also ``scenes.jsonl``, one line
per image with every object's attributes, geometry and tight box, so a check
can re-resolve any phrase against its scene.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vgkit.data.index import DatasetIndex, Record
from vgkit.data.synth_lang import COLOURS, SHAPES, SIZES, SceneObject, candidates, choose
from vgkit.data.validate import image_file
from vgkit.errors import VgkitError
from vgkit.fsutil import atomic_write_text, folder_lock
from vgkit.progress import progress_bar
from vgkit.text import tokenize

# Bump whenever a change alters the output, so ensure_synthetic regenerates.
GENERATOR_VERSION = 3
DEFAULT_IMAGE_SIZE = (320, 240)
DEFAULT_SPLITS = (0.8, 0.1, 0.1)
DEFAULT_N_IMAGES = 2000
SPLIT_NAMES = ("train", "val", "test")
PALETTE = {"red": (215, 35, 35), "orange": (245, 135, 20), "yellow": (240, 215, 30),
           "green": (35, 165, 55), "blue": (35, 85, 220), "purple": (145, 55, 190)}
# Half-extents in pixels at a 240-pixel short side (objects span ~1.5-5 feature cells
# at 224 x 224): the ranges leave a gap so "small" and "large" never come close.
RADIUS = {"small": (22.0, 30.0), "large": (42.0, 56.0)}
GAP, BORDER = 8, 4  # min pixels between objects' boxes, and to the image edge
JPEG_QUALITY = 90
SCENES_FILE = "scenes.jsonl"


def object_mask(shape: str, cx: float, cy: float, radius: float,
                angle: float) -> tuple[Image.Image, tuple[int, int]]:
    """A binary mask of one shape and the pixel offset of its top-left corner."""
    ox, oy = math.floor(cx - radius) - 2, math.floor(cy - radius) - 2
    side = math.ceil(2 * radius) + 5
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    x, y = cx - ox, cy - oy

    def poly(points: list[tuple[float, float]]) -> None:
        c, s = math.cos(angle), math.sin(angle)
        draw.polygon([(x + px * c - py * s, y + px * s + py * c) for px, py in points], fill=255)

    if shape == "circle":
        r = radius * 0.95
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    elif shape == "square":
        a = radius * 0.82  # keeps the rotated square inside `radius`
        poly([(-a, -a), (a, -a), (a, a), (-a, a)])
    elif shape == "triangle":
        poly([(radius * math.sin(t), -radius * math.cos(t)) for t in (0, 2 * math.pi / 3, 4 * math.pi / 3)])
    elif shape == "star":
        poly([((radius if k % 2 == 0 else radius * 0.45) * math.sin(k * math.pi / 5),
               -(radius if k % 2 == 0 else radius * 0.45) * math.cos(k * math.pi / 5)) for k in range(10)])
    elif shape == "cross":
        a, b = radius * 0.3, radius * 0.95
        poly([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a),
              (-b, a), (-b, -a), (-a, -a)])
    else:
        raise VgkitError(f"unknown synthetic shape {shape!r}; valid: {', '.join(SHAPES)}")
    return mask, (ox, oy)


def _sample_objects(rng: random.Random, w: int, h: int) -> list[dict[str, Any]]:
    scale = min(w, h) / 240
    objs: list[dict[str, Any]] = []
    # Sizes are drawn up front and placed large first: rejection sampling would otherwise
    # drop mostly large objects and skew the boxes small (ReferIt's boxes are large).
    sizes = sorted((rng.choice(SIZES) for _ in range(rng.randint(3, 5))), key=SIZES.index, reverse=True)
    for _ in range(200):  # rejection sampling; a crowded scene just ends up smaller
        if len(objs) == len(sizes):
            break
        # Reuse shapes and colours often: repeated shapes make position and
        # relation expressions necessary rather than decorative.
        shape = rng.choice([o["shape"] for o in objs]) if objs and rng.random() < 0.45 else rng.choice(SHAPES)
        colour = rng.choice([o["colour"] for o in objs]) if objs and rng.random() < 0.3 else rng.choice(COLOURS)
        size = sizes[len(objs)]
        r = rng.uniform(*RADIUS[size]) * scale
        cx, cy = rng.uniform(BORDER + r, w - BORDER - r), rng.uniform(BORDER + r, h - BORDER - r)
        if any(abs(cx - o["cx"]) < r + o["radius"] + GAP and abs(cy - o["cy"]) < r + o["radius"] + GAP
               for o in objs):
            continue
        angle = 0.0 if shape == "circle" else math.radians(rng.uniform(-10, 10))
        rgb = [min(255, max(0, c + rng.randint(-12, 12))) for c in PALETTE[colour]]
        objs.append({"shape": shape, "colour": colour, "size": size, "cx": cx, "cy": cy,
                     "radius": r, "angle": angle, "rgb": rgb})
    return objs


def _background(rng: random.Random, w: int, h: int) -> Image.Image:
    # A faintly tinted grey ramp: low saturation keeps the palette colours unique to objects.
    base = np.array([rng.uniform(95, 165)] * 3) + [rng.uniform(-10, 10) for _ in range(3)]
    ramp = np.linspace(-1, 1, h if rng.random() < 0.5 else w, dtype=np.float32) * rng.uniform(-20, 20)
    ramp = ramp[:, None] if len(ramp) == h else ramp[None, :]
    arr = np.broadcast_to(base[None, None, :] + ramp[..., None], (h, w, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img, "RGBA")
    g = int(base.mean())

    def grey(spread: int, alpha: tuple[int, int]) -> tuple[int, int, int, int]:
        v = g + rng.randint(-spread, spread)
        r, gr, b = (max(0, min(255, v + rng.randint(-8, 8))) for _ in range(3))
        return r, gr, b, rng.randint(*alpha)

    for _ in range(rng.randint(3, 8)):  # soft blobs, too faint and grey to pass for an object
        bx, by, rx, ry = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 60), rng.uniform(8, 60)
        draw.ellipse((bx - rx, by - ry, bx + rx, by + ry), fill=grey(45, (25, 60)))
    for _ in range(rng.randint(4, 10)):
        pts = [(rng.uniform(-20, w + 20), rng.uniform(-20, h + 20)) for _ in range(2)]
        draw.line(pts, fill=grey(60, (50, 110)), width=rng.randint(1, 2))
    return img


def render(objects: list[dict[str, Any]], rng: random.Random, nrng: np.random.Generator,
           w: int, h: int) -> tuple[Image.Image, list[tuple[float, float, float, float]]]:
    """Draw a scene; returns the image and each object's exact box."""
    img = _background(rng, w, h)
    boxes = []
    for o in objects:
        mask, (ox, oy) = object_mask(o["shape"], o["cx"], o["cy"], o["radius"], o["angle"])
        img.paste(tuple(o["rgb"]), (ox, oy, ox + mask.width, oy + mask.height), mask)
        bbox = mask.getbbox()  # exclusive right/bottom: the continuous convention
        assert bbox is not None, "an object mask is never empty"
        x1, y1, x2, y2 = bbox
        boxes.append((float(ox + x1), float(oy + y1), float(ox + x2), float(oy + y2)))
    noise = nrng.integers(-9, 10, size=(h, w, 3), dtype=np.int16)
    arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr), boxes


def _split_of(n_images: int, splits: tuple[float, ...], seed: int) -> list[str]:
    if len(splits) != 3 or any(f < 0 for f in splits) or sum(splits) <= 0:
        raise VgkitError(f"synthetic splits must be 3 non-negative fractions, got {splits!r}")
    total = sum(splits)
    counts = [round(n_images * f / total) for f in splits[1:]]
    counts = [n_images - sum(counts), *counts]
    if counts[0] < 0:
        raise VgkitError(f"synthetic splits {splits!r} leave no room for train with {n_images} images")
    order = list(range(n_images))
    random.Random(seed).shuffle(order)
    out = [""] * n_images
    start = 0
    for name, c in zip(SPLIT_NAMES, counts, strict=True):
        for i in order[start:start + c]:
            out[i] = name
        start += c
    return out


def _params(n_images: int, seed: int, image_size: tuple[int, int], splits: tuple[float, ...]) -> dict[str, Any]:
    return {"generator": "vgkit.data.synth", "version": GENERATOR_VERSION, "n_images": n_images,
            "seed": seed, "image_size": list(image_size), "splits": [float(f) for f in splits],
            "shapes": list(SHAPES), "colours": list(COLOURS), "sizes": list(SIZES)}


def _progress(items: range, enabled: bool, what: str) -> Iterator[int]:
    with progress_bar(what, len(items), "images", enabled=enabled) as advance:
        for i in items:
            yield i
            advance()


def generate(out_dir: str | os.PathLike[str], n_images: int, seed: int = 0,
             image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
             splits: tuple[float, float, float] = DEFAULT_SPLITS, progress: bool = True) -> DatasetIndex:
    """Draw `n_images` scenes with unique referring expressions into `out_dir`; returns the index."""
    if n_images < 1:
        raise VgkitError(f"synthetic n_images must be >= 1, got {n_images}")
    w, h = (int(v) for v in image_size)
    if min(w, h) < 64:
        raise VgkitError(f"synthetic image_size {image_size!r} is too small (min side 64)")
    root = Path(out_dir)
    with folder_lock(root, "synthetic dataset generation"):  # one writer at a time
        (root / "images").mkdir(parents=True, exist_ok=True)
        split_of = _split_of(n_images, tuple(splits), seed)
        records, scenes = [], []
        for i in _progress(range(n_images), progress, "drawing synthetic scenes"):
            ss = np.random.SeedSequence([seed, i])  # per image: the same for any n_images
            rng, nrng = random.Random(int(ss.generate_state(1)[0])), np.random.default_rng(ss)
            objs = _sample_objects(rng, w, h)
            img, boxes = render(objs, rng, nrng, w, h)
            image_id = f"syn{i:06d}"
            img.save(root / "images" / f"{image_id}.jpg", quality=JPEG_QUALITY, subsampling=0)
            for o, b in zip(objs, boxes, strict=True):
                o["box"] = list(b)
            scenes.append({"image_id": image_id, "width": w, "height": h, "objects": objs})
            records += _expressions(image_id, objs, (w, h), split_of[i], rng)
        index = DatasetIndex(records, name="synthetic", source="synth",
                             meta=_params(n_images, seed, (w, h), tuple(splits)))
        atomic_write_text(root / SCENES_FILE, "".join(json.dumps(s) + "\n" for s in scenes))
        index.save(root)
        return index


def _expressions(image_id: str, objs: list[dict[str, Any]], size: tuple[int, int], split: str,
                 rng: random.Random) -> list[Record]:
    scene = scene_objects(objs)
    order = list(range(len(objs)))
    rng.shuffle(order)
    n_targets, records = rng.randint(2, 4), []
    for t in order:
        if n_targets == 0:
            break
        meanings = choose(candidates(scene, t, size), rng.randint(1, 3), rng)
        if not meanings:
            continue  # nothing singles this object out; another target takes its turn
        n_targets -= 1
        o = objs[t]
        for k, mn in enumerate(meanings):
            phrase = mn.phrase()
            records.append(Record(
                image_id=image_id, image_path=f"images/{image_id}.jpg", width=size[0], height=size[1],
                box=tuple(o["box"]), phrase=phrase, tokens=tuple(tokenize(phrase)), split=split,
                ref_id=f"{image_id}_{t}", sent_id=k,
                extra={"type": mn.kind, "shape": o["shape"], "colour": o["colour"], "size": o["size"]}))
    return records


def scene_objects(objs: list[dict[str, Any]]) -> list[SceneObject]:
    """The language-level view of a scene's object dicts (as in ``scenes.jsonl``)."""
    return [SceneObject(o["shape"], o["colour"], o["size"], tuple(o["box"])) for o in objs]


def load_scenes(root: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The ``scenes.jsonl`` of a generated dataset, by image id."""
    path = Path(root) / SCENES_FILE
    if not path.is_file():
        raise VgkitError(f"{path}: missing; regenerate the synthetic dataset")
    with path.open(encoding="utf-8") as f:
        return {s["image_id"]: s for s in map(json.loads, f) if s}


def load_synthetic(root: str | os.PathLike[str]) -> DatasetIndex:
    """Load a generated synthetic dataset's index."""
    d = Path(root)
    if not (d / "manifest.json").is_file():
        raise VgkitError(f"no synthetic dataset at {d} (no manifest.json); create one with "
                         "vgkit.data.synth.generate(...) or ensure_synthetic(...)")
    index = DatasetIndex.load(d)
    if index.source != "synth":
        raise VgkitError(f"{d}: dataset source is {index.source!r}, not a synthetic dataset")
    return index


def ensure_synthetic(root: str | os.PathLike[str], n_images: int = DEFAULT_N_IMAGES, seed: int = 0,
                     image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                     splits: tuple[float, float, float] = DEFAULT_SPLITS,
                     progress: bool = True) -> DatasetIndex:
    """The synthetic dataset at `root`, generated first if absent or made with other parameters."""
    d = Path(root)
    want = _params(n_images, seed, (int(image_size[0]), int(image_size[1])), tuple(splits))
    try:
        index = load_synthetic(d)
    except VgkitError:
        index = None
    if (index is not None and index.meta == want and (d / SCENES_FILE).is_file()
            and all(image_file(d, p).is_file() for p in {r.image_path for r in index})):
        return index
    if index is not None:  # drop images a larger earlier run left behind
        for p in (d / "images").glob("syn*.jpg"):
            if not p.stem[3:].isdigit() or int(p.stem[3:]) >= n_images:
                p.unlink()
    return generate(d, n_images, seed=seed, image_size=image_size, splits=splits, progress=progress)


def preview(index: DatasetIndex, root: str | os.PathLike[str], out_png: str | os.PathLike[str],
            n: int = 6, cols: int = 3) -> Path:
    """Save a grid of `n` images, each with one target box and its phrase, to `out_png`."""
    seen, picks = set(), []
    for r in index:  # one record per image, so the grid shows n different scenes
        if r.image_id not in seen:
            seen.add(r.image_id)
            picks.append(r)
        if len(picks) == n:
            break
    if not picks:
        raise VgkitError("preview: the index is empty")
    font = ImageFont.load_default()
    cw, ch, text_h = max(r.width for r in picks), max(r.height for r in picks), 28
    rows = math.ceil(len(picks) / cols)
    sheet = Image.new("RGB", (cols * (cw + 8), rows * (ch + text_h + 8)), (255, 255, 255))
    for k, r in enumerate(picks):
        with Image.open(image_file(Path(root), r.image_path)) as im:
            cell = im.convert("RGB")
        draw = ImageDraw.Draw(cell)
        x1, y1, x2, y2 = r.box
        # The outline is drawn just outside the box so the object's edge pixels stay visible.
        draw.rectangle((x1 - 2, y1 - 2, x2 + 1, y2 + 1), outline=(0, 0, 0), width=1)
        draw.rectangle((x1 - 1, y1 - 1, x2, y2), outline=(255, 255, 255), width=1)
        x0, y0 = (k % cols) * (cw + 8) + 4, (k // cols) * (ch + text_h + 8) + 4
        sheet.paste(cell, (x0, y0))
        label = f"{r.phrase}  [{r.extra.get('type', '?')}, {r.split}]"
        ImageDraw.Draw(sheet).text((x0, y0 + ch + 4), label, fill=(0, 0, 0), font=font)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return out
