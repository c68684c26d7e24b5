"""Checkpoints: one safetensors file of tensors plus JSON metadata, written atomically.

A checkpoint file holds the model's trainable weights and buffers (``model.*``),
the optimizer's tensors (``optim.*``) and the RNG states (``rng.*``); its
safetensors metadata holds ``vgkit`` = JSON with the recipe, vocabulary, epoch,
step, metrics and the optimizer's non-tensor state. A frozen backbone's weights
live once per run in ``backbone.safetensors`` beside it. Nothing is unpickled.

The file is written to a temporary name and renamed over the old one, so a kill
at any moment leaves either the previous checkpoint or the new one, never half;
a full disk (any failed write) is one line naming the file, the temporary removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from vgkit.errors import VgkitError
from vgkit.fsutil import replacing

FORMAT = "vgkit-checkpoint/1"


def atomic_save(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> None:
    """Write `tensors` and JSON `meta` to `path` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with replacing(path) as tmp:  # safetensors' I/O errors become one line naming `path`
        save_file(flat, str(tmp), metadata={"format": FORMAT, "vgkit": json.dumps(meta)})
        with open(tmp, "rb") as f:  # the bytes reach the disk before the name changes
            os.fsync(f.fileno())
        os.replace(tmp, path)


# What every checkpoint's metadata holds; a file without one of them cannot be used.
META_KEYS = ("recipe", "vocab", "vocab_digest", "epoch", "step_in_epoch", "global_step", "best",
             "history", "optimizer")


def load(path: Path, require: Collection[str] = ()) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint file: (tensors, metadata); a damaged file is a one-line error.

    `require` names metadata keys the caller needs (a run's checkpoints: ``META_KEYS``).
    """
    if not path.is_file():
        raise VgkitError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            if raw.get("format") != FORMAT:
                raise VgkitError(f"{path}: not a vgkit checkpoint (format {raw.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, ValueError, SafetensorError) as exc:  # how safetensors reports damage
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VgkitError(f"{path}: unreadable checkpoint, truncated or damaged ({first})") from None
    try:
        meta = json.loads(raw["vgkit"])
    except (KeyError, json.JSONDecodeError):
        raise VgkitError(f"{path}: damaged checkpoint metadata (no readable 'vgkit' JSON)") from None
    if not isinstance(meta, dict):
        raise VgkitError(f"{path}: damaged checkpoint metadata (not a JSON object)")
    missing = [k for k in require if k not in meta]
    if missing:
        raise VgkitError(f"{path}: checkpoint metadata lacks {', '.join(missing)}")
    return tensors, meta


def fit_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path,
              may_lack: Collection[str] = ()) -> None:
    """Load `state` into `model`; a missing tensor or a shape that differs is a one-line error."""
    own = model.state_dict()
    wrong = [f"{k} is {list(v.shape)} in the file, {list(own[k].shape)} in the recipe's model"
             for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        more = f" (and {len(wrong) - 2} more)" if len(wrong) > 2 else ""
        raise VgkitError(f"{path}: tensors do not fit the recipe's model: "
                         f"{'; '.join(wrong[:2])}{more}")
    missing = sorted(set(own) - set(state) - set(may_lack))
    if missing:
        raise VgkitError(f"{path}: lacks {len(missing)} of the model's tensors, e.g. "
                         f"{', '.join(missing[:3])}")
    model.load_state_dict(state, strict=False)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that train plus all buffers: what a checkpoint must hold of the model."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def frozen_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that do not train (a frozen backbone): saved once per run."""
    return {n: p for n, p in model.named_parameters() if not p.requires_grad}


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state into tensors and JSON (no pickling)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      meta: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for key, v in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> dict[str, torch.Tensor]:
    """The torch RNG states (CPU and every CUDA device)."""
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda{i}"] = s
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
