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
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
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


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint file: (tensors, metadata)."""
    if not path.is_file():
        raise VgkitError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise VgkitError(f"{path}: not a vgkit checkpoint (format {meta.get('format')!r})")
            return {k: f.get_tensor(k) for k in f.keys()}, json.loads(meta["vgkit"])  # noqa: SIM118
    except (OSError, ValueError) as exc:  # safetensors reports corruption as these
        raise VgkitError(f"{path}: unreadable checkpoint ({exc})") from None


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
