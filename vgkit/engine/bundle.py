"""Everything a recipe's data means for training and evaluation, prepared once.

Text side: the dataset index, the vocabulary (a file, or built from the train
split) and the word embeddings. Image side: the frozen-feature cache when the
backbone is frozen (extracted automatically when missing), else images read and
transformed in DataLoader workers; nothing at all for a blind (text-only) model. Batches carry the maps of each distinct
image once and an ``image_index`` per expression.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vgkit.data.features import FeatureCache, cache_dir_for, cache_spec, extract_features
from vgkit.data.images import BadImageError, ImageTransform, read_image
from vgkit.data.index import DatasetIndex, Record
from vgkit.data.validate import check_index, image_file
from vgkit.distributed import DistInfo
from vgkit.errors import VgkitError
from vgkit.interfaces import TextInputs
from vgkit.pretrained import is_packaged, packaged_file
from vgkit.recipe import Recipe
from vgkit.registry import Registry
from vgkit.text import Vocabulary

UNREADABLE = "unreadable image"


@dataclass
class ExprSet:
    """The expressions of one split, as tensors: targets in network-input pixels.

    ``records`` are the expressions that can be used; ``excluded`` holds every other
    expression of the split with the reason (an unreadable image, an invalid record),
    so that nothing is dropped unaccounted: evaluation counts them as failures.
    """

    records: list[Record]
    image_ids: list[str]  # distinct images of the split
    image_of: Tensor  # [n] long: index into image_ids
    target: Tensor  # [n, 4] xyxy, network-input pixels
    sizes: Tensor  # [n, 2] original (width, height)
    excluded: list[tuple[Record, str]] = field(default_factory=list)  # (record, reason)

    @classmethod
    def of(cls, records: list[Record], target: Tensor, sizes: Tensor,
           excluded: list[tuple[Record, str]]) -> ExprSet:
        """An ExprSet over `records`, its distinct images and `image_of` derived from them."""
        ids = sorted({r.image_id for r in records})
        where = {i: k for k, i in enumerate(ids)}
        return cls(records, ids, torch.tensor([where[r.image_id] for r in records],
                                              dtype=torch.long), target, sizes, excluded)

    def __len__(self) -> int:
        return len(self.records)

    def excluded_counts(self) -> dict[str, int]:
        """How many expressions were excluded, by reason."""
        return dict(sorted(Counter(why for _, why in self.excluded).items()))

    def without(self, drop: set[int], reason: str) -> ExprSet:
        """This set less the expressions at positions `drop`, which join ``excluded``."""
        keep = [i for i in range(len(self)) if i not in drop]
        t = torch.tensor(keep, dtype=torch.long)
        return ExprSet.of([self.records[i] for i in keep], self.target[t], self.sizes[t],
                          self.excluded + [(self.records[i], reason) for i in sorted(drop)])


@dataclass
class Batch:
    """One step's worth: each distinct image once (maps or pixels) and its expressions."""

    idx: Tensor  # [B] positions in the ExprSet
    text: TextInputs
    target: Tensor  # [B, 4] xyxy input pixels
    image_index: Tensor  # [B] into features/images
    features: Tensor | None = None  # [I, C, h, w]
    images: Tensor | None = None  # [I, 3, H, W]
    # images read every step that could not be decoded (zeros in `images`): the message of
    # each, and which expressions of the batch use one of them
    bad_images: list[str] = field(default_factory=list)
    on_bad_image: Tensor | None = None  # [B] bool

    def to(self, device: torch.device) -> Batch:
        """Move every tensor to `device`."""
        return Batch(self.idx, TextInputs(to_device(self.text.ids, device),
                                          to_device(self.text.mask, device)),
                     to_device(self.target, device), to_device(self.image_index, device),
                     to_device(self.features, device), to_device(self.images, device),
                     self.bad_images, self.on_bad_image)


class DataBundle:
    """The prepared data of a recipe: index, vocabulary, embeddings, transform, cache."""

    def __init__(self, recipe: Recipe, registry: Registry, *, vocab: Vocabulary | None = None,
                 progress: bool = True) -> None:
        self.recipe, self.root = recipe, recipe.data_root()
        ds = recipe.data.dataset
        self.index: DatasetIndex = registry.build("dataset", ds.name, ds.options(), root=self.root)
        # every index (built-in, a plugin's, hand-made) goes through the one validator: an
        # unsafe image path stops here; invalid records are excluded from every split
        self.check = check_index(self.index)
        self.transform = ImageTransform(tuple(recipe.data.image_size), recipe.data.resize)  # type: ignore[arg-type]
        self.vocab = vocab or self._vocabulary()
        self.progress = progress
        self.cache: FeatureCache | None = None
        self.blind = False  # True: batches carry no images and no maps (see text_only)
        # False when the model's text encoder has its own tokenizer: then words outside
        # the vocabulary mean nothing and are not warned about
        self.reads_vocab = True
        self._features: Tensor | None = None  # the whole cache, when it lives in (GPU) memory
        self._splits: dict[str, ExprSet] = {}
        # records the index validator rejects, by position in the index: excluded from every
        # split (the index builds its Records when read: no identity to key on)
        self._invalid = {k: f"invalid record ({kind})" for k, kind in self.check.invalid.items()}

    # ------------------------------------------------------------ text side
    def _vocabulary(self) -> Vocabulary:
        d = self.recipe.data
        if d.vocab:
            return Vocabulary.from_file(self.resolve(d.vocab, "data.vocab"))
        train = self.index.split(d.train_split)
        return Vocabulary.build([r.tokens for r in train], min_count=d.min_count)

    def embeddings(self, dim: int | None) -> Tensor | None:
        """The embedding matrix named by ``data.embeddings`` ("random": the encoder's own init).

        `dim` is the size the text encoder declares; None for an encoder that reads none.
        """
        spec = self.recipe.data.embeddings
        if spec == "random":
            return None
        if dim is None:
            raise VgkitError(f"data.embeddings={spec!r}: the text encoder "
                             f"{self.recipe.model.text_encoder.name!r} reads no word vectors "
                             "(it declares no embedding_dim); set data.embeddings=random")
        from vgkit.data.embeddings import load_embeddings

        path = self.resolve(spec, "data.embeddings", env="VGKIT_EMBEDDINGS")
        return load_embeddings(path, self.vocab, dim=dim, progress=self.progress).weights

    def resolve(self, name: str, key: str, env: str | None = None) -> Path:
        """A file named in the recipe: ``pkg:NAME``, absolute, under the data root, or under $`env`.

        ``ARCHIVE.zip::member.txt`` names a member of a zip archive: the archive is looked
        for, and the ``::member`` part is kept on the returned path.
        """
        if is_packaged(name):  # pkg:NAME: a file inside an installed PyPI package
            return packaged_file(name)
        file, sep, member = name.partition("::")
        p = Path(file).expanduser()
        candidates = [p] if p.is_absolute() else [self.root / p, Path.cwd() / p]
        if env and os.environ.get(env) and not p.is_absolute():
            candidates.append(Path(os.environ[env]) / p)
        for c in candidates:
            if c.is_file():
                return Path(f"{c}{sep}{member}") if sep else c
        raise VgkitError(f"{key}: file {file!r} not found (looked in "
                         f"{', '.join(str(c.parent) for c in candidates)}); give a path with "
                         f"--set {key}=PATH")

    # ------------------------------------------------------------ image side
    def attach_cache(self, backbone: Any, *, device: torch.device, dist_info: DistInfo,
                     workers: int = 2, cache_dir: str | None = None) -> FeatureCache:
        """Open the frozen backbone's cache for this dataset, extracting it first if needed."""
        spec = cache_spec(backbone, self.transform, self.index)
        path = Path(cache_dir) if cache_dir else cache_dir_for(self.root, spec)
        if not (path / "manifest.json").is_file():
            extract_features(backbone, self.transform, self.index, self.root, path,
                             workers=workers, device=device, dist_info=dist_info,
                             progress=self.progress)
        self.cache = FeatureCache.open(path, expected=spec)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if cache_fits_gpu(self.cache.features.nbytes, free):  # ReferIt: ~4 GB fp16
                self._features = self.cache.load_all(device)
        return self.cache

    def attach_model(self, model: Any, *, device: torch.device, dist_info: DistInfo,
                     workers: int = 2, cache_dir: str | None = None) -> None:
        """Serve what `model` reads: phrases alone (blind), cached maps (frozen backbone,
        extracted first if needed) or images; out-of-vocabulary warnings only where the
        model's text encoder reads this vocabulary."""
        self.reads_vocab = hasattr(model.text_encoder, "vocab")
        if model.blind:
            self.text_only()
        elif model.backbone.frozen:
            self.attach_cache(model.backbone, device=device, dist_info=dist_info,
                              workers=workers, cache_dir=cache_dir)

    def text_only(self) -> None:
        """Serve batches of phrases and targets alone: the model reads no image."""
        self.blind = True

    def split(self, name: str) -> ExprSet:
        """The usable expressions of split `name`; the rest are in ``excluded`` with the reason."""
        if name not in self._splits:
            recs, excluded = [], []
            bad = self.cache.bad if self.cache is not None else set()
            rows = self.index.split_rows(name).tolist()
            for k, r in zip(rows, self.index.split(name), strict=True):
                why = self._invalid.get(k) or (UNREADABLE if r.image_id in bad else None)
                if why:
                    excluded.append((r, why))
                else:
                    recs.append(r)
            if not recs:
                counts = Counter(why for _, why in excluded)
                raise VgkitError(f"split {name!r} has no usable expressions; all "
                                 f"{len(excluded):,} are excluded: "
                                 + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
            unknown = sum(1 for r in recs if not any(t in self.vocab for t in r.tokens))
            if unknown and self.progress and self.reads_vocab:  # kept (a test set stays whole), said
                warnings.warn(f"split {name!r}: {unknown:,} of {len(recs):,} phrases have only "
                              "words outside the vocabulary (they read as <unk>)", stacklevel=2)
            sizes = torch.tensor([[r.width, r.height] for r in recs], dtype=torch.float32)
            boxes = torch.tensor([r.box for r in recs], dtype=torch.float32)
            target = self.transform.box_to_input(boxes, sizes[:, 0], sizes[:, 1])
            self._splits[name] = ExprSet.of(recs, target, sizes, excluded)
        return self._splits[name]

    def feature_stats(self, split: str, max_images: int = 512) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std of the cached maps over (up to) `max_images` of `split`."""
        assert self.cache is not None
        ids = self.split(split).image_ids[:max_images]
        maps = self.cache.get(self.cache.rows(ids)).float()  # [I, C, h, w]
        std = maps.std((0, 2, 3))
        # nearly-dead relu channels (std ~1e-4 in a random-init CNN) would otherwise turn
        # rare activations into outliers of x100: floor their std at a tenth of the median
        return maps.mean((0, 2, 3)), std.clamp(min=max(0.1 * std.median().item(), 1e-6))

    def batches(self, exprs: ExprSet, order: Sequence[Sequence[int]], tokenize: Any, *,
                workers: int = 0) -> Iterator[Batch]:
        """Yield a Batch for each list of expression positions in `order`."""
        if self.blind:
            for idx in order:
                t = torch.tensor(list(idx))
                yield Batch(t, tokenize([exprs.records[i].phrase for i in t.tolist()]),
                            exprs.target[t], torch.arange(len(t)))
            return
        if self.cache is not None:
            for idx in order:
                yield self._cached_batch(exprs, list(idx), tokenize)
            return
        loader = DataLoader(_ImageBatches(self, exprs, order), batch_size=None,
                            num_workers=workers, pin_memory=torch.cuda.is_available(),
                            generator=torch.Generator())  # keep the global RNG for dropout
        for idx, images, image_index, bad in loader:
            on_bad = torch.tensor([bool(bad[int(k)]) for k in image_index]) if bad else None
            yield Batch(idx, tokenize([exprs.records[i].phrase for i in idx.tolist()]),
                        exprs.target[idx], image_index, images=images,
                        bad_images=[m for m in bad if m], on_bad_image=on_bad)

    def _cached_batch(self, exprs: ExprSet, idx: list[int], tokenize: Any) -> Batch:
        assert self.cache is not None
        img = exprs.image_of[idx]
        uniq, image_index = torch.unique(img, return_inverse=True)
        rows = self.cache.rows([exprs.image_ids[i] for i in uniq.tolist()])
        if self._features is not None:  # the whole cache in GPU memory: no copy at all
            feats = self._features[to_device(rows, self._features.device)]
        else:  # read from the memory-mapped file (Batch.to pins it on its way to a GPU)
            feats = self.cache.get(rows)
        t = torch.tensor(idx)
        return Batch(t, tokenize([exprs.records[i].phrase for i in idx]), exprs.target[t],
                     image_index, features=feats)


class _ImageBatches(Dataset):
    """Worker-side loading for backbones that run every step: pixels of each batch's images."""

    def __init__(self, bundle: DataBundle, exprs: ExprSet, order: Sequence[Sequence[int]]) -> None:
        self.root, self.transform, self.exprs = bundle.root, bundle.transform, exprs
        self.order = [list(o) for o in order]
        self.paths = {r.image_id: r.image_path for r in exprs.records}

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor, Tensor, list[str]]:
        idx = torch.tensor(self.order[k])
        uniq, image_index = torch.unique(self.exprs.image_of[idx], return_inverse=True)
        images, bad = [], []
        for i in uniq.tolist():
            try:  # reported to the main process, which decides (eval: unscored; train: stop)
                images.append(self.transform(read_image(
                    image_file(self.root, self.paths[self.exprs.image_ids[i]]))))
                bad.append("")
            except BadImageError as exc:
                H, W = self.transform.size
                images.append(torch.zeros(3, H, W))
                bad.append(str(exc))
        return idx, torch.stack(images), image_index, bad if any(bad) else []


@overload
def to_device(t: Tensor, device: torch.device) -> Tensor: ...
@overload
def to_device(t: None, device: torch.device) -> None: ...
def to_device(t: Tensor | None, device: torch.device) -> Tensor | None:
    """`t` on `device`; to a GPU through page-locked memory, so the host does not wait.

    A copy from ordinary (pageable) memory makes the host wait for the GPU's queue: one
    such copy a step would undo the loop's freedom from per-step synchronisation.
    """
    if t is None or t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    return t.to(device)


def cache_fits_gpu(cache_bytes: int, gpu_free_bytes: int) -> bool:
    """Whether a GPU run keeps the whole feature cache in GPU memory: at most half of what is free.

    The other half is the model's: activations, gradients and Adam's state. A cache that
    does not fit stays memory-mapped and each batch is gathered into page-locked memory.
    """
    return cache_bytes <= gpu_free_bytes // 2


def eval_order(exprs: ExprSet, batch_size: int) -> list[list[int]]:
    """Expressions grouped by image, in batches: each image's maps are computed once.

    An image's expressions never straddle two batches unless they alone exceed `batch_size`
    (then that image's maps are computed once per batch its expressions fill).
    """
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(exprs.image_of.tolist()):
        groups.setdefault(k, []).append(i)
    order: list[list[int]] = []
    batch: list[int] = []
    for k in sorted(groups):
        g = groups[k]
        if batch and len(batch) + len(g) > batch_size:
            order.append(batch)
            batch = []
        while len(g) > batch_size:  # more expressions than a batch: whole batches of them
            order.append(g[:batch_size])
            g = g[batch_size:]
        batch += g
    return [*order, batch] if batch else order
