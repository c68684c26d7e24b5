"""The Python front door: load a trained run and ground phrases in images.

``vgkit.load(run)`` returns a :class:`Grounder`; ``Grounder.predict`` takes images
(paths, PIL images, HxWx3 uint8 arrays) and phrases and returns :class:`Prediction`s
with the box in original-image pixels. The command line is one consumer of this.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from PIL import Image, ImageOps

from vgkit.data.images import ImageTransform, read_image
from vgkit.engine.visualize import render_figure, words_for
from vgkit.errors import VgkitError
from vgkit.model import GroundingModel
from vgkit.recipe import Recipe


def check_phrase(model: Any, phrase: str) -> None:
    """Refuse a phrase with no words; warn, naming them, when none of its words is known."""
    from vgkit.text import tokenize

    tokens = tokenize(phrase)
    if not tokens:
        raise VgkitError(f"the phrase {phrase!r} has no words: give the expression to ground")
    vocab = getattr(model.text_encoder, "vocab", None)  # encoders with their own tokenizer have none
    if vocab is not None and not any(t in vocab for t in tokens):
        warnings.warn(f"no word of {phrase!r} is in the model's vocabulary "
                      f"({', '.join(dict.fromkeys(tokens))}): the box ignores the phrase",
                      stacklevel=2)


# a path (str or os.PathLike), a PIL image, or an HxWx3 uint8 numpy array
ImageLike = str | os.PathLike[str] | Image.Image | np.ndarray
ImageList = list[ImageLike] | tuple[ImageLike, ...]  # a batch of images
PhraseList = list[str] | tuple[str, ...]  # a batch of phrases


@dataclass(frozen=True)
class Prediction:
    """One phrase grounded in one image.

    ``box`` is ``(x1, y1, x2, y2)`` in the image's own pixels (as a viewer shows it:
    a photo's EXIF orientation is applied), continuous: ``w = x2 - x1``.
    """

    phrase: str
    box: tuple[float, float, float, float]
    image_size: tuple[int, int]  # (width, height)
    attention: np.ndarray | None  # image attention alpha_I as [h, w] over the feature grid
    words: list[str] | None  # the words text attention weighs (None where it cannot say)
    word_attention: np.ndarray | None  # [len(words)] text attention alpha_T

    @property
    def xywh(self) -> tuple[float, float, float, float]:
        """The box as (x, y, w, h)."""
        x1, y1, x2, y2 = self.box
        return x1, y1, x2 - x1, y2 - y1


def open_image(image: ImageLike) -> Image.Image:
    """A path, PIL image or HxWx3 uint8 array as an upright RGB PIL image (EXIF applied)."""
    if isinstance(image, Image.Image):
        return ImageOps.exif_transpose(image).convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise VgkitError(f"an image array must be HxWx3 uint8, got {image.shape} "
                             f"{image.dtype}")
        return Image.fromarray(image, "RGB")
    if isinstance(image, str | os.PathLike):
        return read_image(image, upright=True)
    raise VgkitError(f"not an image: {type(image).__name__} (give a path, a PIL image or an "
                     "HxWx3 uint8 array)")


class Grounder:
    """A trained model ready to ground phrases: what :func:`load` returns."""

    def __init__(self, model: GroundingModel, recipe: Recipe, run: Path, which: str,
                 device: torch.device) -> None:
        self.model, self.recipe, self.run, self.which = model, recipe, run, which
        self.device = device
        self.transform = ImageTransform(tuple(recipe.data.image_size),  # type: ignore[arg-type]
                                        recipe.data.resize)

    def __repr__(self) -> str:
        return f"Grounder({self.recipe.name!r} from {str(self.run)!r} on {self.device})"

    @overload
    def predict(self, image: ImageLike, phrase: str, *, batch_size: int = 32) -> Prediction: ...

    @overload
    def predict(self, image: ImageList, phrase: str | PhraseList, *,
                batch_size: int = 32) -> list[Prediction]: ...

    @overload
    def predict(self, image: ImageLike, phrase: PhraseList, *,
                batch_size: int = 32) -> list[Prediction]: ...

    def predict(self, image: ImageLike | ImageList, phrase: str | PhraseList, *,
                batch_size: int = 32) -> Prediction | list[Prediction]:
        """Ground `phrase` in `image`; lists give one Prediction per (image, phrase) pair.

        One image with a list of phrases grounds each phrase in it; a list of images
        with one phrase grounds it in each; two lists of the same length pair up.
        Each distinct image is run through the backbone once.
        """
        single = not isinstance(image, list | tuple) and isinstance(phrase, str)
        images: list[ImageLike] = list(image) if isinstance(image, list | tuple) else [image]
        phrases = [phrase] if isinstance(phrase, str) else list(phrase)
        if len(images) == 1 and len(phrases) > 1:
            images = images * len(phrases)
        elif len(phrases) == 1 and len(images) > 1:
            phrases = phrases * len(images)
        if len(images) != len(phrases):
            raise VgkitError(f"{len(images)} images and {len(phrases)} phrases: give one image, "
                             "one phrase, or as many of each")
        for p in phrases:
            check_phrase(self.model, p)
        pictures: dict[int, Image.Image] = {}  # the same object given twice is read once
        for im in images:
            if id(im) not in pictures:
                pictures[id(im)] = open_image(im)
        keys = [id(im) for im in images]
        out: list[Prediction] = []
        for at in range(0, len(phrases), batch_size):
            ids = keys[at:at + batch_size]
            out += self._batch([pictures[k] for k in ids], ids, phrases[at:at + batch_size])
        return out[0] if single else out

    def _batch(self, pictures: list[Image.Image], ids: list[int],
               phrases: list[str]) -> list[Prediction]:
        order = list(dict.fromkeys(ids))  # each distinct image through the backbone once
        distinct = [pictures[ids.index(i)] for i in order]
        x = torch.stack([self.transform(p) for p in distinct]).to(self.device)
        index = torch.tensor([order.index(i) for i in ids], device=self.device)
        text = self.model.tokenize(phrases).to(self.device)
        amp = self.device.type == "cuda"  # the same precision as evaluation
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            res = self.model(text, images=x, image_index=index)
        w = torch.tensor([float(p.size[0]) for p in pictures])
        h = torch.tensor([float(p.size[1]) for p in pictures])
        boxes = self.transform.box_to_original(res.boxes.float().cpu(), w, h).tolist()
        s, mask = res.state, text.mask.cpu()
        grid = self.model.spec.grid
        preds = []
        for b, p in enumerate(phrases):
            a_I = None if s.alpha_I is None else s.alpha_I[b].float().cpu().reshape(grid).numpy()
            a_T = None if s.alpha_T is None else s.alpha_T[b].float().cpu()[mask[b]].numpy()
            words = words_for(p, len(a_T)) if a_T is not None else None
            preds.append(Prediction(p, tuple(boxes[b]), pictures[b].size, a_I, words, a_T))
        return preds

    def figure(self, image: ImageLike, phrase: str,
               prediction: Prediction | None = None) -> Image.Image:
        """The picture of one prediction: the box, the attention heat map, the words by weight."""
        picture = open_image(image)
        pred = prediction or self.predict(picture, phrase)
        assert isinstance(pred, Prediction)
        a_I = None if pred.attention is None else torch.from_numpy(pred.attention).flatten()
        a_T = None if pred.word_attention is None else torch.from_numpy(pred.word_attention)
        return render_figure(picture, phrase, list(pred.box), alpha_I=a_I, alpha_T=a_T,
                             grid=self.model.spec.grid, transform=self.transform)

    def evaluate(self, split: str | None = None, root: str | os.PathLike[str] | None = None, *,
                 dataset: str | None = None, convention: str = "continuous",
                 splits: str | Sequence[str] | None = None,
                 protocol: str | Sequence[str] | None = None) -> dict[str, Any]:
        """What ``vgkit eval`` prints: Acc@0.5, mean IoU, counts (``n``, ``scored``) and breakdowns.

        `split` defaults to the recipe's ``data.test_split``. With `splits` (``"all"``, ``"val,testA"`` or a list)
        every split is predicted in one pass and the result is per split: ``n``,
        ``scored``, ``unscored``, ``miou`` and, per protocol, ``correct`` and ``acc``.
        `protocol` (a name, a list, or ``"all"``; default ``iou>=0.5``) adds a
        ``protocols`` entry to a single split's numbers too.
        """
        from vgkit.engine.evaluate import split_scores
        from vgkit.engine.protocols import parse_protocols
        from vgkit.engine.report import breakdowns
        from vgkit.engine.run import evaluate_checkpoint, evaluate_splits

        where = Path(root) if root is not None else None
        if splits is not None:
            if split is not None:
                raise VgkitError(f"split={split!r} and splits={splits!r}: give one of them")
            return evaluate_splits(self.run, splits, protocols=protocol, which=self.which,
                                   dataset=dataset, root=where, device=str(self.device),
                                   progress=False).summary()
        chosen = parse_protocols(protocol) if protocol is not None else None
        ev = evaluate_checkpoint(self.run, which=self.which, dataset=dataset, root=where,
                                 split=split, device=str(self.device), progress=False)
        out = breakdowns(ev.preds, convention)  # type: ignore[arg-type]
        if chosen:
            out["protocols"] = split_scores(ev.preds, chosen)["protocols"]
        return out


def load(run: str | os.PathLike[str], which: str = "best", device: str = "auto") -> Grounder:
    """A trained run (its folder, or one checkpoint file) as a :class:`Grounder`."""
    from vgkit.distributed import DistInfo, device_for
    from vgkit.engine.rundir import check_which
    from vgkit.engine.train import load_trained
    from vgkit.plugins import get_registry

    check_which(which, "which=")
    dev = device_for(DistInfo(), device)
    path = Path(run)
    model, recipe, _, _ = load_trained(path, get_registry(), which=which, device=dev)
    return Grounder(model, recipe, path, which, dev)


def train(recipe: str | Recipe, out: str | os.PathLike[str], overrides: Sequence[str] = (), *,
          device: str = "auto", resume: bool = False, progress: bool = True) -> Path:
    """Train a recipe (a name, a file, or a loaded Recipe) into run folder `out`; return it."""
    from vgkit.engine.train import train_run
    from vgkit.plugins import get_registry
    from vgkit.recipe import load_recipe

    reg = get_registry()
    rec = load_recipe(recipe, list(overrides), registry=reg) if isinstance(recipe, str) else recipe
    run = Path(out)
    train_run(rec, reg, run, device=device, resume=resume, progress=progress)
    return run
