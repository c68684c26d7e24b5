"""Training: Adam over a recipe's model, seeded, resumable exactly, on one process or many.

Under ``torchrun`` every rank takes its DistributedSampler shard of each global
batch and DistributedDataParallel averages the gradients; rank 0 logs, validates
and writes checkpoints. The batch order of an epoch depends only on (seed,
epoch), and checkpoints carry the RNG states, so a run resumed from a checkpoint
continues exactly as it would have.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from vgkit.distributed import DistInfo, barrier, device_for, init_distributed
from vgkit.engine import checkpoint as ckpt
from vgkit.engine.bundle import DataBundle
from vgkit.engine.evaluate import accuracy, predict
from vgkit.engine.memory import keep_freed_memory
from vgkit.engine.rundir import RunDir, checkpoint_to_load
from vgkit.errors import VgkitError
from vgkit.fsutil import folder_lock
from vgkit.interfaces import LossOutput
from vgkit.model import GroundingModel, build_model, compute_loss
from vgkit.progress import progress_bar
from vgkit.recipe import OptimConfig, Recipe
from vgkit.registry import Registry
from vgkit.text import Vocabulary

# a training step the host has not checked yet: (its number, its records' positions, the
# device flag "not finite", its loss terms)
_Pending = tuple[int, Tensor, Tensor, LossOutput]


class NonFiniteLoss(VgkitError):
    """The loss became NaN or infinite."""


@dataclass
class TrainState:
    """Where training stands: what a checkpoint records besides tensors."""

    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # batches of the current epoch already taken
    global_step: int = 0
    best: float = -1.0  # best validation Acc@0.5 so far
    history: list[dict[str, Any]] = field(default_factory=list)  # validation results


def _meta(recipe: Recipe, vocab: Vocabulary, state: TrainState, opt_meta: dict[str, Any]) -> dict[str, Any]:
    return {"recipe": recipe.model_dump(mode="json"), "vocab": vocab.itos,
            "vocab_digest": vocab.digest(), "epoch": state.epoch,
            "step_in_epoch": state.step_in_epoch, "global_step": state.global_step,
            "best": state.best, "history": state.history, "optimizer": opt_meta}


def found_inf(total: Tensor, params: Sequence[Tensor], one: Tensor) -> Tensor:
    """1.0 where the loss `total` or any gradient of `params` is not finite, else 0.0.

    Computed on the device without a host sync (`one`: a 1.0 on that device, the unscale
    factor the check takes); set as fused Adam's ``found_inf``, it skips that step.
    """
    found = (~torch.isfinite(total.detach())).float()
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, one)
    return found


class Trainer:
    """Holds the model, data, optimizer and run directory of one training run.

    Rank 0 locks the run directory from construction until :meth:`close` (or the
    end of a ``with Trainer(...)`` block, or the process): a second writer of
    the same directory fails at once instead of mixing two runs in it.
    """

    def __init__(self, recipe: Recipe, registry: Registry, out: Path, *, device: str = "auto",
                 progress: bool = True, cache_dir: str | None = None) -> None:
        self.info: DistInfo = init_distributed()
        self.device = device_for(self.info, device)  # a bad --device leaves no folder behind
        self._lock = folder_lock(out, "vgkit train").acquire() if self.info.is_main else None
        self.recipe, self.out, self.progress = recipe, out, progress and self.info.is_main
        self.rundir = RunDir(out)
        t = recipe.train
        if t.batch_size % self.info.world:
            raise VgkitError(f"train.batch_size {t.batch_size} is not divisible by the "
                             f"{self.info.world} ranks")
        torch.manual_seed(t.seed)
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
            keep_freed_memory()  # reuse the big activations' pages instead of faulting anew
        self.data = DataBundle(recipe, registry, progress=self.progress)
        model, self.loss = build_model(recipe, registry, vocab=self.data.vocab,
                                       embeddings=self.data.embeddings(
                                           embedding_dim(recipe, registry)))
        self.model: GroundingModel = model
        self.data.attach_model(model, device=self.device, dist_info=self.info, workers=t.workers,
                               cache_dir=cache_dir)
        self.train_set = self.data.split(recipe.data.train_split)
        if self.train_set.excluded and self.info.is_main:
            n = len(self.train_set) + len(self.train_set.excluded)
            warnings.warn(f"training on {len(self.train_set):,} of {n:,} expressions of split "
                          f"{recipe.data.train_split!r}; dropped "
                          + ", ".join(f"{why} {k:,}" for why, k in
                                      self.train_set.excluded_counts().items()), stacklevel=2)
        self._departures()
        model.to(self.device)
        if self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        self.params = [p for p in model.parameters() if p.requires_grad]
        o = recipe.optim
        # fused: one kernel for all parameters (the per-tensor loop was ~20% of a CPU step)
        self.opt = torch.optim.Adam(self.params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                    weight_decay=o.weight_decay, fused=True)
        self.ddp = (DistributedDataParallel(model, device_ids=[self.device.index]
                                            if self.device.type == "cuda" else None)
                    if self.info.world > 1 else None)
        self.state = TrainState()
        # steps between reads of the loss on the host: each one on the CPU (free there),
        # every train.log_every on a GPU (a read waits for the whole queue of kernels)
        self.sync_every = 1 if self.device.type == "cpu" else recipe.train.log_every
        self._one = torch.ones((), device=self.device)  # the unscale factor of the grad check

    def close(self) -> None:
        """Release the run directory's lock (training is over; safe to call twice)."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _departures(self) -> None:
        """The recipe's departures (model.feature_norm, model.init_bias), applied before training."""
        m = self.recipe.model
        if m.feature_norm == "channel":
            if self.data.cache is None:
                raise VgkitError("model.feature_norm=channel needs a frozen (cached) backbone")
            self.model.set_feature_norm(*self.data.feature_stats(self.recipe.data.train_split))
        if m.init_bias == "dataset-mean":
            from vgkit.boxes import from_xyxy

            mean = from_xyxy(self.train_set.target, self.model.head.box_format,
                             self.model.spec.input_size).mean(0)
            self.model.head.init_output_bias(mean)

    # ------------------------------------------------------------ checkpoints
    def save(self, name: str) -> None:
        """Write checkpoint `name` (rank 0 only); the frozen backbone once per run."""
        if not self.info.is_main:
            return
        bb = self.rundir.backbone
        frozen = ckpt.frozen_state(self.model)
        if frozen and not bb.is_file():
            ckpt.atomic_save(frozen, {"note": "frozen parameters of this run"}, bb)
        opt_t, opt_meta = ckpt.optimizer_state(self.opt)
        tensors = {**{f"model.{k}": v for k, v in ckpt.trainable_state(self.model).items()},
                   **opt_t, **ckpt.rng_state()}
        ckpt.atomic_save(tensors, _meta(self.recipe, self.data.vocab, self.state, opt_meta),
                         self.rundir.checkpoint(name))

    def resume(self) -> None:
        """Continue from the run folder's last checkpoint."""
        path = self.rundir.last
        tensors, meta = ckpt.load(path, require=ckpt.META_KEYS)
        if meta["vocab_digest"] != self.data.vocab.digest():
            raise VgkitError(f"{path}: vocabulary differs from this run's data")
        if meta["recipe"] != self.recipe.model_dump(mode="json"):
            raise VgkitError(f"{path}: was trained with another recipe; resume with the same "
                             "--recipe and --set values")
        state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        ckpt.fit_state(self.model, state, path, may_lack=set(ckpt.frozen_state(self.model)))
        try:
            ckpt.restore_optimizer(self.opt, tensors, meta["optimizer"])
        except ValueError as e:  # torch: "... doesn't match the size of optimizer's group"
            raise VgkitError(f"{path}: its optimizer state does not fit this model's trainable "
                             f"parameters (written by another vgkit version?): {e}") from None
        ckpt.restore_rng(tensors)
        self.state = TrainState(meta["epoch"], meta["step_in_epoch"], meta["global_step"],
                                meta["best"], meta["history"])

    def _found_inf(self, total: Tensor) -> Tensor:
        """1.0 where the loss or any gradient is not finite, else 0.0 (on the device, no sync)."""
        return found_inf(total, self.params, self._one)

    def _check_finite(self, pending: list[_Pending], batch: Any = None) -> None:
        """Stop at the first of the `pending` steps that was not finite (one host sync).

        Fused Adam skipped that step's update, so the weights are the last good ones. The
        message names the step and its records; `batch` (the caller's latest) serves the
        diagnosis when it is that step's batch, else that batch is read again.
        """
        if not pending:
            return
        bad = torch.stack([found for _, _, found, _ in pending]).cpu()
        if not bool(bad.any()):
            pending.clear()
            return
        step, idx, _, res = pending[int(bad.nonzero()[0])]
        if batch is None or not torch.equal(batch.idx.cpu(), idx.cpu()):
            batch = next(iter(self.data.batches(self.train_set, [idx.tolist()],
                                                self.model.tokenize)))
        self.state.global_step = step - 1  # the message counts from the step that failed
        raise NonFiniteLoss(self._non_finite(batch, res))

    def _non_finite(self, b: Any, res: Any) -> str:
        """Why training stops on a non-finite loss: step, terms, records, the likely cause."""
        bad_terms = [k for k, v in res.terms.items() if not torch.isfinite(v).all()]
        recs = [self.train_set.records[i] for i in b.idx.tolist()]
        ids = ", ".join(f"{r.ref_id or r.image_id}#{r.sent_id}" for r in recs[:4])
        ids += f" and {len(recs) - 4} more" if len(recs) > 4 else ""
        cause = self._non_finite_cause(b)
        last = self.rundir.last
        saved = (f"the last good checkpoint is {last} (--resume continues from it)"
                 if last.is_file() else "no checkpoint was written before it")
        what = (f"(non-finite terms: {', '.join(bad_terms) or 'total'})"
                if not torch.isfinite(res.total) else "but its gradients are not finite")
        return (f"loss is {res.total.item()} at epoch {self.state.epoch + 1}, step "
                f"{self.state.global_step + 1} {what} on records {ids}; {cause}; stopped, {saved}")

    def _non_finite_cause(self, b: Any) -> str:
        if b.features is not None and not torch.isfinite(b.features).all():
            where = self.data.cache.directory if self.data.cache is not None else "memory"
            return f"the batch's cached feature maps are not finite (feature cache {where})"
        if b.images is not None and not torch.isfinite(b.images).all():
            return "the batch's images are not finite after the transform"
        if not torch.isfinite(b.target).all():
            return f"a target box is not finite (dataset at {self.data.root})"
        bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            return (f"the model's weights are no longer finite ({', '.join(bad[:3])}): training "
                    f"diverged; lower optim.lr (now {self.recipe.optim.lr:g})")
        return (f"the inputs and weights are finite: a loss term overflowed on this batch; lower "
                f"optim.lr (now {self.recipe.optim.lr:g}) or check the loss options")

    # ------------------------------------------------------------ the loop
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        positions: Any = range(len(self.train_set))  # the sampler only needs len()
        sampler: DistributedSampler[int] = DistributedSampler(
            positions, num_replicas=self.info.world,
                                     rank=self.info.rank, shuffle=True, seed=self.recipe.train.seed,
                                     drop_last=True)
        sampler.set_epoch(epoch)
        order = list(sampler)
        local = self.recipe.train.batch_size // self.info.world
        return [order[i:i + local] for i in range(0, len(order) - local + 1, local)]

    def fit(self) -> TrainState:
        """Train until ``train.epochs``; validate and checkpoint each epoch."""
        t, info = self.recipe.train, self.info
        log = _Log(self.rundir.metrics, info.is_main)
        model = self.ddp or self.model
        amp = self.device.type == "cuda"
        steps_per_epoch = len(self._epoch_batches(0))
        total = steps_per_epoch * t.epochs
        with progress_bar("train", total, "steps", done=self.state.global_step,
                          enabled=self.progress) as advance:
            try:
                while self.state.epoch < t.epochs:
                    batches = self._epoch_batches(self.state.epoch)
                    todo = batches[self.state.step_in_epoch:]
                    model.train()
                    tick, seen = time.perf_counter(), 0
                    pending: list[_Pending] = []  # steps whose flags the host has not read
                    for b in self.data.batches(self.train_set, todo, self.model.tokenize,
                                               workers=t.workers):
                        if b.bad_images:  # read every step, so there is no skip list yet
                            raise VgkitError(f"{b.bad_images[0]} ({len(b.bad_images)} unreadable "
                                             f"in this batch); fix or remove it: training reads "
                                             f"each image every epoch")
                        b = b.to(self.device)
                        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                            out = model(b.text, features=b.features, images=b.images,
                                        image_index=b.image_index)
                        res = compute_loss(self.loss, out, b.target, self.model.head.box_format,
                                           self.model.spec.input_size)
                        self.opt.zero_grad(set_to_none=True)
                        res.total.backward()
                        # No host sync here: fused Adam skips by itself the update of a step
                        # whose loss or gradients (all-reduced: the same on every rank) are not
                        # finite, and _check_finite reads the flags every sync_every steps.
                        found_inf = self._found_inf(res.total)
                        self.opt.found_inf = found_inf  # type: ignore[attr-defined]
                        pending.append((self.state.global_step + 1, b.idx, found_inf,
                                        LossOutput(res.total.detach(),
                                                   {k: v.detach() for k, v in res.terms.items()})))
                        for group in self.opt.param_groups:
                            group["lr"] = lr_at(self.recipe.optim, self.state.global_step, total)
                        self.opt.step()
                        self.state.step_in_epoch += 1
                        self.state.global_step += 1
                        seen += len(b.idx) * info.world
                        rate = seen / max(time.perf_counter() - tick, 1e-9)
                        step = self.state.global_step
                        if step % self.sync_every == 0:  # every log_every steps at least
                            self._check_finite(pending, b)
                            advance(1, loss=res.total.item(), **{"samples/s": rate})
                        else:
                            advance(1, **{"samples/s": rate})
                        if step % t.log_every == 0:
                            log.write(event="train", epoch=self.state.epoch + 1,
                                      step=step, loss=res.total.item(),
                                      **{k: v.item() for k, v in res.terms.items()},
                                      samples_per_s=rate)
                        if step % t.checkpoint_every == 0:
                            self._check_finite(pending)
                            self.save("last")
                    self._check_finite(pending)
                    self.state.epoch += 1
                    self.state.step_in_epoch = 0
                    self._validate(log)
            except KeyboardInterrupt:
                self.save("last")
                raise
        log.close()
        return self.state

    def _validate(self, log: _Log) -> None:
        """Validation Acc@0.5 on rank 0; best and last checkpoints."""
        if self.info.is_main:
            val = self.data.split(self.recipe.data.val_split)
            preds = predict(self.model, self.data, val, batch_size=self.recipe.train.eval_batch_size,
                            device=self.device)
            m = {"epoch": self.state.epoch, "step": self.state.global_step, **accuracy(preds)}
            self.state.history.append(m)
            log.write(event="val", **m)
            if self.progress:
                print(f"epoch {self.state.epoch}: val Acc@0.5 {m['acc@0.5']:.2%}  "
                      f"mIoU {m['miou']:.3f}", flush=True)
            improved = m["acc@0.5"] > self.state.best
            if improved:
                self.state.best = m["acc@0.5"]
            self.save("last")
            if improved:
                self.save("best")
        barrier()


def train_run(recipe: Recipe, registry: Registry, out: Path, *, device: str = "auto",
              resume: bool = False, progress: bool = True, cache_dir: str | None = None,
              on_start: Callable[[Trainer], None] | None = None) -> TrainState:
    """Train `recipe` into run folder `out` (or continue it with `resume`) to the end.

    A folder that holds a run is refused unless resuming. SIGTERM (``kill``, a
    scheduler's time limit, torchrun stopping its workers) stops like Ctrl-C: the
    current step is saved as ``last`` and KeyboardInterrupt is raised; ``resume``
    continues exactly. `on_start(trainer)` runs once the data and model are ready.
    """
    RunDir(out).check_for_training(resume)
    with Trainer(recipe, registry, out, device=device, progress=progress,
                 cache_dir=cache_dir) as trainer:
        if resume:
            trainer.resume()
        if on_start is not None:
            on_start(trainer)
        with _sigterm_interrupts():
            return trainer.fit()


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the block (where signals can be set: the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def embedding_dim(recipe: Recipe, registry: Registry) -> int | None:
    """The word-vector size the recipe's text encoder declares (its ``embedding_dim`` option).

    None: the encoder reads no word vectors (it has its own tokenizer and weights).
    """
    enc = recipe.model.text_encoder
    dim = getattr(registry.get("text_encoder", enc.name).make_options(enc.options()),
                  "embedding_dim", None)
    return int(dim) if dim is not None else None


def lr_at(optim: OptimConfig, step: int, total: int) -> float:
    """The learning rate of step `step` (0-based) of `total` under the recipe's schedule."""
    if optim.schedule == "constant" or total <= 0:
        return optim.lr
    return 0.5 * optim.lr * (1 + math.cos(math.pi * min(step, total) / total))


def load_trained(run: Path, registry: Registry, *, which: str = "best",
                 device: torch.device | str = "cpu") -> tuple[GroundingModel, Recipe, Vocabulary, dict[str, Any]]:
    """Rebuild a trained model from a run directory (or a checkpoint file)."""
    from vgkit.recipe import validate_recipe

    path, rundir = checkpoint_to_load(run, which)
    last = path.with_name(rundir.last.name)
    try:
        tensors, meta = ckpt.load(path, require=ckpt.META_KEYS)
    except VgkitError as exc:
        if path == last or not last.is_file():
            raise
        raise VgkitError(f"{exc}; the run's last checkpoint is {last}: evaluate it with "
                         "--which last") from None
    recipe = validate_recipe(meta["recipe"], registry, source=str(path))
    vocab = Vocabulary(meta["vocab"])
    bb_file = rundir.backbone
    # backbone.safetensors also holds a frozen text encoder's weights, so a backbone without
    # a weights option (`none`: text only) can come with one
    bb_component = registry.get("backbone", recipe.model.backbone.name)
    bb_takes_file = "weights" in bb_component.options.model_fields

    with warnings.catch_warnings():  # the weights come from the checkpoint, not the recipe's file
        warnings.simplefilter("ignore")
        model, _ = build_model(recipe, registry, vocab=vocab, backbone_options=(
            {"weights": None} if bb_file.is_file() and bb_takes_file else None))
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    if bb_file.is_file():
        try:
            backbone = load_file(str(bb_file))
        except (OSError, ValueError, SafetensorError) as exc:
            raise VgkitError(f"{bb_file}: unreadable, truncated or damaged ({exc})") from None
        ckpt.fit_state(model, backbone, bb_file, may_lack=set(model.state_dict()) - set(backbone))
        state.update(backbone)
    elif ckpt.frozen_state(model):
        raise VgkitError(f"{bb_file}: missing; the run's frozen backbone weights are kept there")
    ckpt.fit_state(model, state, path)
    return model.to(device).eval(), recipe, vocab, meta


class _Log:
    """metrics.jsonl (and TensorBoard when it is installed), rank 0 only."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.tb: Any = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = path.open("a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self.tb = None

    def write(self, **row: Any) -> None:
        """Append one JSON line (and scalars to TensorBoard)."""
        if not self.enabled:
            return
        row = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in row.items()}
        self.f.write(json.dumps({"time": time.time(), **row}) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, int | float) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{row['event']}/{k}", v, row.get("step", 0))

    def close(self) -> None:
        """Flush and close."""
        if self.enabled:
            self.f.close()
            if self.tb is not None:
                self.tb.close()
