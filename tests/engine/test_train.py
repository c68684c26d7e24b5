"""Training: exact kill-and-resume, DDP equals one rank, NaN stop, crash-safe checkpoints."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vgkit.data.synth import generate
from vgkit.engine import checkpoint as ckpt
from vgkit.engine.train import NonFiniteLoss, Trainer, load_trained
from vgkit.plugins import PluginHost
from vgkit.recipe import load_recipe

TINY = ["data.image_size=[64, 64]", "train.batch_size=4", "train.epochs=2",
        "train.checkpoint_every=3", "train.log_every=1", "train.workers=0",
        "model.attention.0.hidden=32", "model.attention.1.hidden=16", "model.head.hidden=24",
        "model.text_encoder.hidden=16", "model.text_encoder.embedding_dim=16"]
NO_DROPOUT = ["model.attention.0.dropout=0", "model.attention.1.dropout=0", "model.head.dropout=0"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("syn")
    generate(r, 24, seed=11, image_size=(96, 80), progress=False)
    return r


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vgkit", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _train_args(root: Path, out: Path, extra: list[str] = ()) -> list[str]:
    args = ["train", "-r", "synthetic-attn-regression", "--root", str(root), "--out", str(out),
            "--quiet"]
    for s in [*TINY, *extra]:
        args += ["--set", s]
    return args


def _weights(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = ckpt.load(run / "checkpoints" / "last.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "optim."))}


def _step(run: Path) -> int:
    try:
        return ckpt.load(run / "checkpoints" / "last.safetensors")[1]["global_step"]
    except Exception:
        return -1


def test_killed_and_resumed_run_ends_with_the_same_weights(root, tmp_path):
    full = _cli(*_train_args(root, tmp_path / "full"))
    assert full.wait(timeout=300) == 0, full.stdout.read()
    victim = _cli(*_train_args(root, tmp_path / "killed"))
    deadline = time.time() + 240
    while _step(tmp_path / "killed") < 3 and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert _step(tmp_path / "killed") >= 3, "the run finished or never checkpointed"
    resumed = _cli(*_train_args(root, tmp_path / "killed"), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def _logged_steps(run: Path) -> int:
    try:
        return (run / "metrics.jsonl").read_text().count('"event": "train"')
    except FileNotFoundError:
        return 0


def test_sigterm_saves_the_current_step_and_exits_like_ctrl_c(root, tmp_path):
    run = tmp_path / "term"
    victim = _cli(*_train_args(root, run, ["train.checkpoint_every=100000"]))
    deadline = time.time() + 240
    while _logged_steps(run) < 2 and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    seen = _logged_steps(run)
    victim.send_signal(signal.SIGTERM)
    out = victim.stdout.read()
    assert victim.wait(timeout=60) == 130, out  # without the handler: killed, -15
    assert "interrupted" in out and "--resume" in out, out
    assert _step(run) >= seen >= 2  # the save happened at the signal, not at a periodic step
    resumed = _cli(*_train_args(root, run, ["train.checkpoint_every=100000"]), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()


def test_resume_with_an_optimizer_state_that_does_not_fit_is_a_one_line_error(tiny_run, registry,
                                                                            tmp_path):
    from vgkit.errors import VgkitError
    from vgkit.recipe import validate_recipe

    run = tmp_path / "old"
    shutil.copytree(tiny_run.run, run)
    last = run / "checkpoints" / "last.safetensors"
    tensors, meta = ckpt.load(last)
    meta["optimizer"]["param_groups"][0]["params"].append(10_000)  # one parameter too many
    ckpt.atomic_save(tensors, meta, last)
    recipe = validate_recipe(meta["recipe"], registry, source=str(last))
    trainer = Trainer(recipe, registry, run, progress=False)
    with pytest.raises(VgkitError, match=r"optimizer state does not fit") as e:
        trainer.resume()
    assert "\n" not in str(e.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_rank(root, tmp_path_factory) -> Path:
    """The tiny recipe trained by one process, without dropout (the reference for DDP)."""
    out = tmp_path_factory.mktemp("one") / "run"
    one = _cli(*_train_args(root, out, NO_DROPOUT))
    assert one.wait(timeout=300) == 0, one.stdout.read()
    return out


def _same_model(a_run: Path, b_run: Path) -> None:
    a = {k: v for k, v in _weights(a_run).items() if k.startswith("model.")}
    b = {k: v for k, v in _weights(b_run).items() if k.startswith("model.")}
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5, rtol=1e-4), k


def _torchrun(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_rank_ddp_equals_one_rank_with_the_same_global_batch(root, one_rank, tmp_path):
    two = _torchrun("--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "vgkit",
                    *_train_args(root, tmp_path / "two", NO_DROPOUT))
    assert two.wait(timeout=300) == 0, two.stdout.read()
    _same_model(one_rank, tmp_path / "two")


def test_two_nodes_by_c10d_rendezvous_equal_one_process(root, one_rank, tmp_path):
    # Two "machines" of one process each, as torchrun runs them across hosts: each node is
    # its own torchrun, and they find each other through the c10d rendezvous on localhost.
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [_torchrun("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                       "--rdzv-endpoint", endpoint, "--rdzv-id", "vgkit-test", "-m", "vgkit",
                       *_train_args(root, tmp_path / "nodes", NO_DROPOUT)) for _ in range(2)]
    logs = []
    for node in nodes:
        assert node.wait(timeout=300) == 0, node.stdout.read()
        logs.append(node.stdout.read())
    # one node holds rank 0 and says how many ranks trained: both, not each alone
    assert sum("on cpu x2:" in log for log in logs) == 1, logs
    _same_model(one_rank, tmp_path / "nodes")


@pytest.mark.parametrize("sync_every", [1, 4], ids=["cpu-checks-each-step", "gpu-checks-every-4"])
def test_nan_loss_stops_with_a_message_and_leaves_the_last_good_checkpoint(root, tmp_path,
                                                                         sync_every):
    host = PluginHost()
    host.load_entry_points()
    base = host.registry.get("loss", "iou-se-area")
    calls = {"n": 0}

    def build(opts, *, spec):
        loss = base.build(opts, spec=spec)
        forward = loss.forward

        def poisoned(pred, target, state, size):
            calls["n"] += 1
            out = forward(pred, target, state, size)
            if calls["n"] == 5:
                out.total = out.total * float("nan")
            return out

        loss.forward = poisoned
        return loss

    host.registry.add("loss", "nan-at-5", build, options=base.options)
    recipe = load_recipe("synthetic-attn-regression", [f"data.root={root}", *TINY,
                                                       "loss.name=nan-at-5", "train.log_every=4"],
                         registry=host.registry)
    trainer = Trainer(recipe, host.registry, tmp_path / "nan", progress=False)
    # a GPU reads the loss every log_every steps: the NaN of step 5 is found at step 6 (the
    # checkpoint's), yet the message names step 5 and its records, and nothing is saved
    trainer.sync_every = sync_every
    seen: list[list[int]] = []
    batches = trainer.data.batches
    trainer.data.batches = lambda *a, **k: (seen.append(b.idx.tolist()) or b
                                            for b in batches(*a, **k))
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at epoch 1, step 5.*last\.safetensors"
                       ) as e:
        trainer.fit()
    record = trainer.train_set.records[seen[4][0]]
    assert f"{record.ref_id or record.image_id}#{record.sent_id}" in str(e.value)
    tensors, meta = ckpt.load(tmp_path / "nan" / "checkpoints" / "last.safetensors")
    assert meta["global_step"] == 3
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())
    # fused Adam skipped the bad step's update: the weights in memory are finite too
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


WRITER = """
import sys, torch
from pathlib import Path
from vgkit.engine.checkpoint import atomic_save
path = Path(sys.argv[1])
step = 0
while True:
    step += 1
    atomic_save({"w": torch.full((4_000_000,), float(step))}, {"step": step}, path)
    print(step, flush=True)
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "last.safetensors"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    for _ in range(3):  # let a few writes complete, then kill in the middle of the next ones
        proc.stdout.readline()
    time.sleep(0.37)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    tensors, meta = ckpt.load(path)
    assert meta["step"] >= 3
    assert torch.equal(tensors["w"], torch.full((4_000_000,), float(meta["step"])))


def test_checkpoint_round_trip_rebuilds_the_trained_model(root, tmp_path):
    host = PluginHost()
    host.load_entry_points()
    recipe = load_recipe("synthetic-attn-regression", [f"data.root={root}", *TINY,
                                                       "train.epochs=1"], registry=host.registry)
    trainer = Trainer(recipe, host.registry, tmp_path / "run", progress=False)
    trainer.fit()
    model, rec, vocab, _ = load_trained(tmp_path / "run", host.registry, which="last")
    assert rec == recipe and vocab.itos == trainer.data.vocab.itos
    sd_a, sd_b = trainer.model.state_dict(), model.state_dict()
    assert all(torch.equal(sd_a[k].cpu(), sd_b[k]) for k in sd_a)
    # the rebuilt backbone names the same feature cache, so evaluation reuses it
    assert model.backbone.identity() == trainer.model.backbone.identity()
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count('"event": "val"') == 1


def test_cosine_schedule_decays_from_lr_to_zero_and_constant_is_the_paper():
    from vgkit.engine.train import lr_at
    from vgkit.recipe import OptimConfig

    cos = OptimConfig(lr=0.01, schedule="cosine")
    assert lr_at(cos, 0, 100) == pytest.approx(0.01)
    assert lr_at(cos, 50, 100) == pytest.approx(0.005)
    assert lr_at(cos, 100, 100) == pytest.approx(0.0, abs=1e-12)
    assert [lr_at(cos, s, 100) for s in range(0, 101, 10)] == sorted(
        (lr_at(cos, s, 100) for s in range(0, 101, 10)), reverse=True)
    assert {lr_at(OptimConfig(lr=0.01), s, 100) for s in (0, 50, 100)} == {0.01}
