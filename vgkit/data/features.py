"""The frozen-feature cache: run a frozen backbone once per image, read maps from disk after.

Layout of a cache directory::

    plan.json       what is being extracted (backbone identity, weights digest,
                    transform, dataset image digest, shape) and the image order
    features.npy    float16 [n_images, C, h, w], memory-mapped
    done.npy        uint8 [n_images]: 0 to do, 1 extracted, 2 bad image (zeros)
    manifest.json   written last, atomically: only its presence makes a cache complete

An interrupted extraction resumes from ``done.npy``; a crash never leaves a
``manifest.json`` behind, so an incomplete cache never looks complete. Under
torchrun each rank extracts every world-th image and rank 0 writes the manifest.

One extraction at a time writes a directory: rank 0 holds its folder lock
(:mod:`vgkit.fsutil`) throughout, so a second writer fails at once. The blocks
of ``features.npy`` are allocated before any map is written (a memmap write on a
full disk is a SIGBUS with no message); a full disk is one line, and what it
leaves is a resumable extraction or nothing, never a manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vgkit.data.images import BadImageError, ImageTransform, read_image
from vgkit.data.index import DatasetIndex
from vgkit.data.validate import image_file
from vgkit.distributed import DistInfo, barrier
from vgkit.errors import VgkitError
from vgkit.fsutil import atomic_write_text, check_space, folder_lock, reserve, write_error
from vgkit.progress import progress_bar

CACHE_VERSION = 1
TODO, DONE, BAD = 0, 1, 2


def image_table(index: DatasetIndex) -> list[tuple[str, str]]:
    """The distinct (image_id, image_path) of an index, sorted by id."""
    return sorted(set(zip(index.column("image_id"), index.column("image_path"), strict=True)))


def images_digest(images: Sequence[tuple[str, str]]) -> str:
    """sha256 over the image list: what the cached maps were computed from."""
    return hashlib.sha256(json.dumps(list(images)).encode()).hexdigest()


def cache_spec(backbone: Any, transform: ImageTransform, index: DatasetIndex) -> dict[str, Any]:
    """Everything that must match for a cache to be reused.

    The index digest covers the annotations too, so a regenerated or re-prepared
    dataset (same image names, other content) never reuses old maps.
    """
    H, W = transform.size
    images = image_table(index)
    spec = {"version": CACHE_VERSION, "backbone": backbone.identity(),
            "transform": transform.describe(), "dataset": index.name,
            "dataset_sha256": index.digest(), "images_sha256": images_digest(images),
            "n_images": len(images),
            "shape": [int(backbone.channels), H // backbone.stride, W // backbone.stride],
            "dtype": "float16"}
    return json.loads(json.dumps(spec))  # as it will read back from the manifest (no tuples)


def cache_dir_for(root: str | os.PathLike[str], spec: dict[str, Any]) -> Path:
    """Default location: ``<root>/features/<model>-<16 hex of the spec>``."""
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / "features" / f"{spec['backbone'].get('model', 'backbone')}-{key}"


def _differences(found: dict[str, Any], expected: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(found) | set(expected)):
        a, b = found.get(k), expected.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: cache has {a!r}, expected {b!r}")
    return out


class FeatureCache:
    """A complete cache opened read-only: maps by image id."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory, self.manifest = directory, manifest
        self.features = np.load(directory / "features.npy", mmap_mode="r")
        self.image_ids: list[str] = manifest["image_ids"]
        self.row = {i: k for k, i in enumerate(self.image_ids)}
        self.bad = set(manifest.get("bad_images", []))

    @classmethod
    def open(cls, directory: str | os.PathLike[str],
             expected: dict[str, Any] | None = None) -> FeatureCache:
        """Open a complete cache; refuse an incomplete one or one whose spec differs."""
        d = Path(directory)
        mpath = d / "manifest.json"
        if not mpath.is_file():
            state = "an unfinished extraction" if (d / "plan.json").is_file() else "no cache"
            raise VgkitError(f"{d}: {state} (no manifest.json); run `vgkit features extract`")
        manifest = json.loads(mpath.read_text())
        if expected is not None:
            diffs = _differences(manifest["spec"], expected)
            if diffs:
                raise VgkitError(f"{d}: stale feature cache, it differs in "
                                 + "; ".join(diffs[:3]) + (" ..." if len(diffs) > 3 else ""))
        return cls(d, manifest)

    def __len__(self) -> int:
        return len(self.image_ids)

    def rows(self, image_ids: Sequence[str]) -> torch.Tensor:
        """Row numbers of `image_ids` (an error naming the first image that is not cached)."""
        try:
            return torch.tensor([self.row[i] for i in image_ids], dtype=torch.long)
        except KeyError as exc:
            raise VgkitError(f"{self.directory}: image {exc.args[0]!r} is not in the cache") from None

    def get(self, rows: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """float16 maps [len(rows), C, h, w] (copied out of the memory map)."""
        idx = np.asarray(rows, dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(self.features[idx]))

    def load_all(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The whole cache copied into one tensor (on a GPU it fits: ReferIt is ~4 GB in fp16)."""
        return torch.from_numpy(np.array(self.features)).to(device)


class _Images(Dataset):
    def __init__(self, root: Path, images: Sequence[tuple[str, str]], todo: Sequence[int],
                 transform: ImageTransform) -> None:
        self.root, self.images, self.todo, self.transform = root, images, list(todo), transform

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor, bool]:
        row = self.todo[k]
        try:
            return row, self.transform(read_image(image_file(self.root, self.images[row][1]))), True
        except BadImageError:
            H, W = self.transform.size
            return row, torch.zeros(3, H, W), False


def extract_features(backbone: Any, transform: ImageTransform, index: DatasetIndex,
                     root: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None, *,
                     batch_size: int = 32, workers: int = 2, device: torch.device | None = None,
                     dist_info: DistInfo | None = None, progress: bool = True) -> Path:
    """Extract (or resume) the cache of `index`'s images; return its directory."""
    info = dist_info or DistInfo()
    device = device or torch.device("cpu")
    images = image_table(index)
    spec = cache_spec(backbone, transform, index)
    out = Path(out_dir) if out_dir else cache_dir_for(root, spec)
    plan = {"spec": spec, "image_ids": [i for i, _ in images]}
    # the other ranks belong to the same job: rank 0 locks the folder for all of them
    with folder_lock(out, "vgkit features extract") if info.is_main else nullcontext():
        _extract(backbone, transform, images, Path(root), out, plan, info,
                 batch_size=batch_size, workers=workers, device=device, progress=progress)
    return out


def _extract(backbone: Any, transform: ImageTransform, images: Sequence[tuple[str, str]],
             root: Path, out: Path, plan: dict[str, Any], info: DistInfo, *, batch_size: int,
             workers: int, device: torch.device, progress: bool) -> None:
    """Fill the arrays of `out` for `plan` (this rank's share) and finish the cache."""
    spec = plan["spec"]
    if info.is_main:
        _prepare(out, plan, spec)
    barrier()
    feats = np.load(out / "features.npy", mmap_mode="r+")
    done = np.load(out / "done.npy", mmap_mode="r+")
    todo = [k for k in range(len(images)) if done[k] == TODO and k % info.world == info.rank]
    backbone = backbone.to(device).eval()
    loader = DataLoader(_Images(root, images, todo, transform), batch_size=batch_size,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator())  # leave the global RNG (dropout) untouched
    with progress_bar(f"extracting {spec['backbone'].get('model')}", len(todo), "images",
                      enabled=progress and info.is_main) as advance:
        for rows, batch, ok in loader:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                 enabled=device.type == "cuda"):
                maps = backbone(batch.to(device, non_blocking=True))
            r, good = rows.numpy(), ok.numpy()
            try:
                values = maps.float().cpu().numpy().astype(np.float16)
                feats[r] = values * good[:, None, None, None]
                feats.flush()  # maps reach the disk before they are marked done
                done[r] = np.where(good, DONE, BAD)
                done.flush()
            except OSError as exc:  # msync's EIO: done.npy still marks only the maps stored
                raise write_error(out / "features.npy", exc) from None
            advance(len(r))
    del feats, done
    barrier()
    if info.is_main:
        _finish(out, plan)
    barrier()


def _prepare(out: Path, plan: dict[str, Any], spec: dict[str, Any]) -> None:
    """Create the arrays, or keep them when an unfinished run of the same plan is there."""
    ppath = out / "plan.json"
    if ppath.is_file() and (out / "done.npy").is_file():
        if json.loads(ppath.read_text()) == plan:
            # resume; a cache begun by an older vgkit may not have its blocks yet
            reserve(out / "features.npy", "the feature cache")
            return
        if (out / "manifest.json").is_file():
            raise VgkitError(f"{out}: holds a different complete cache; choose another directory")
        _clear(out)  # an unfinished cache of something else: start over
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    n, shape = spec["n_images"], spec["shape"]
    header = 4096  # generous: an .npy header is 128 bytes, a filesystem block 4 KiB
    check_space(out, n * int(np.prod(shape)) * 2 + n + 2 * header, "the feature cache")
    try:
        for name, dtype, dims in (("features.npy", np.float16, (n, *shape)),
                                  ("done.npy", np.uint8, (n,))):
            np.lib.format.open_memmap(out / name, mode="w+", dtype=dtype, shape=dims).flush()
            reserve(out / name, "the feature cache")
        _atomic_json(ppath, plan)
    except BaseException as exc:  # no plan.json over arrays that are not all there
        for name in ("plan.json", "features.npy", "done.npy"):
            (out / name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(exc.filename or out, exc) from None
        raise


def _clear(out: Path) -> None:
    """Delete a cache directory's contents, but not the lock that this process holds in it."""
    for p in out.iterdir():
        if p.name.startswith(".vgkit.lock"):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _finish(out: Path, plan: dict[str, Any]) -> None:
    done = np.load(out / "done.npy")
    if (done == TODO).any():
        return  # interrupted: no manifest, so the cache does not look complete
    bad = [plan["image_ids"][k] for k in np.flatnonzero(done == BAD)]
    _atomic_json(out / "manifest.json", {**plan, "bad_images": bad, "complete": True,
                                         "created": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


def extract_dataset(dataset: str, backbone: str, *, root: str | os.PathLike[str] | None = None,
                    weights: str | os.PathLike[str] | None = None, image_size: int = 224,
                    resize: str = "stretch", out: str | os.PathLike[str] | None = None,
                    batch_size: int = 32, workers: int = 2, device: str = "auto",
                    on_start: Any = None) -> FeatureCache:
    """Extract (or resume) the cache of a registered dataset's images with a registered,
    frozen backbone at a square `image_size`; return the complete cache.

    `on_start(n_images, backbone, device)` is called on rank 0 before the work begins.
    """
    from vgkit.distributed import device_for, init_distributed
    from vgkit.plugins import get_registry

    if resize not in ("stretch", "letterbox"):
        raise VgkitError(f"--resize {resize!r}: expected stretch or letterbox")
    info = init_distributed()
    registry = get_registry()
    data_root = Path(root) if root is not None else Path("data") / dataset
    index = registry.build("dataset", dataset, {}, root=data_root)
    bb = registry.build("backbone", backbone, {"weights": str(weights) if weights else None})
    if not bb.frozen:
        raise VgkitError(f"backbone {backbone!r} is trainable: only frozen backbones are cached")
    if image_size % bb.stride or image_size < bb.stride:
        raise VgkitError(f"--image-size {image_size}: not a positive multiple of {backbone}'s "
                         f"stride {bb.stride}")
    transform = ImageTransform((image_size, image_size), resize)  # type: ignore[arg-type]
    dev = device_for(info, device)
    if info.is_main and on_start is not None:
        on_start(len(image_table(index)), bb, dev)
    path = extract_features(bb, transform, index, data_root, out, batch_size=batch_size,
                            workers=workers, device=dev, dist_info=info)
    return FeatureCache.open(path)
