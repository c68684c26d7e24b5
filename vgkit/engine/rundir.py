"""A run folder: the one place that knows what ``vgkit train`` writes where.

Training, search, evaluation, the API and the command line all name a run's files
through :class:`RunDir`::

    RUN/
      checkpoints/last.safetensors    trainable weights, optimizer, RNG (every epoch)
      checkpoints/best.safetensors    the same at the best validation Acc@0.5
      backbone.safetensors            frozen parameters, written once
      metrics.jsonl                   one line per logged step and per validation
      eval-<split>.json               what ``vgkit eval`` printed, as numbers
      predictions-<split>.jsonl       one line per evaluated expression
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vgkit.errors import VgkitError

WHICH = ("best", "last")
_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class RunDir:
    """A run folder (it need not exist yet)."""

    path: Path

    @classmethod
    def of(cls, where: str | os.PathLike[str]) -> RunDir:
        """The run of a run folder, or of a checkpoint file inside one (``RUN/checkpoints/X``)."""
        p = Path(where)
        return cls(p.parent.parent if p.is_file() else p)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, which: str) -> Path:
        """``checkpoints/<which>.safetensors`` (which: best or last)."""
        check_which(which)
        return self.checkpoints / f"{which}{_SUFFIX}"

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    @property
    def backbone(self) -> Path:
        """The frozen parameters, saved once beside the checkpoints."""
        return self.path / f"backbone{_SUFFIX}"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def eval_summary(self, stem: str) -> Path:
        return self.path / f"eval-{stem}.json"

    def predictions(self, stem: str) -> Path:
        return self.path / f"predictions-{stem}.jsonl"

    def has_run(self) -> bool:
        """Whether a training run has saved here (its last checkpoint exists)."""
        return self.last.is_file()

    def check_for_training(self, resume: bool) -> None:
        """Refuse to train into a folder that holds a run (unless resuming), or to resume nothing."""
        if self.has_run() and not resume:
            raise VgkitError(f"{self.path} already holds a run; add --resume to continue it or "
                             "choose another --out")
        if resume and not self.has_run():
            raise VgkitError(f"--resume: no checkpoint in {self.checkpoints}")


def check_which(which: str, label: str = "--which ") -> None:
    """One line for anything but best or last (`label` names the argument)."""
    if which not in WHICH:
        raise VgkitError(f"{label}{which!r}: choose best or last")


def checkpoint_to_load(where: str | os.PathLike[str], which: str = "best") -> tuple[Path, RunDir]:
    """The checkpoint file `where` names (a file, or a run folder and `which`), and its run.

    A run folder whose ``best`` was never written (training stopped before its first
    validation) gives ``last``.
    """
    p = Path(where)
    run = RunDir.of(p)
    if p.is_file():
        return p, run
    path = run.checkpoint(which)
    if not path.is_file() and p.is_dir() and which == "best":
        path = run.last
    return path, run
