"""torchrun integration: rank and world size from the environment, one process group.

No process management of our own: ``torchrun`` starts the processes and sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; we join the group
(gloo on CPU, nccl on CUDA) and everything else follows from these numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vgkit.errors import VgkitError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0, which logs and writes checkpoints."""
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the torchrun process group if there is one; a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend)
    return info


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def device_for(info: DistInfo, requested: str = "auto") -> torch.device:
    """CUDA (this rank's GPU) when present and not told otherwise, else CPU.

    A device this machine does not have is a one-line error here, not a traceback
    from the first tensor moved to it.
    """
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank)
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise VgkitError(f"--device {requested!r}: not a device; use auto, cpu, cuda or "
                         "cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise VgkitError(f"--device {requested!r}: vgkit runs on cpu or cuda")
    if not torch.cuda.is_available():
        raise VgkitError(f"--device {requested}: CUDA is not available on this machine; "
                         "use --device cpu (or auto)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise VgkitError(f"--device {requested}: this machine has {torch.cuda.device_count()} "
                         "CUDA device(s)")
    return device
