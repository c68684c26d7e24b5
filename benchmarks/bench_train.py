"""Training samples/s and evaluation refs/s of the paper's model, with and without the cache."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from common import (
    DEFAULT_ROOT,
    append_results,
    bracketed,
    count_flops,
    machine,
    machine_line,
    matmul_gflops,
    md_table,
    quiet_warnings,
    section,
    timeit,
)

from vgkit.data.synth import ensure_synthetic
from vgkit.distributed import DistInfo
from vgkit.engine.bundle import DataBundle, ExprSet, eval_order
from vgkit.engine.evaluate import predict
from vgkit.model import build_model, compute_loss
from vgkit.plugins import get_registry
from vgkit.recipe import load_recipe
from vgkit.text import Vocabulary

NAME = "bench_train"
QUICK = {"n_images": 24, "batches": (20, 48), "warmup": 1, "groups": 2, "steps": {20: 2, 48: 1},
         "nocache_steps": 1, "eval_cached": 8, "eval_images": 1, "repeats": 1}
FULL = {"n_images": 128, "batches": (20, 256), "warmup": 2, "groups": 5, "steps": {20: 4, 256: 1},
        "nocache_steps": 3, "eval_cached": 32, "eval_images": 4, "repeats": 3}


def parse() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: finishes in < 2 minutes")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where data and caches go")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    return p.parse_args()


def setup(root: Path, n_images: int) -> tuple:
    """The reference model (Table 1 sizes, 8,803-token vocabulary) on a cached synthetic set."""
    data = root / f"synthetic-{n_images}"
    ensure_synthetic(data, n_images=n_images, image_size=(320, 240), progress=False)
    syn = load_recipe("synthetic-attn-regression", [
        f"data.root={data}",
        f'data.dataset={{name = "synthetic", n_images = {n_images}, image_size = [320, 240]}}'])
    ref = load_recipe("refit-attn-regression")  # the paper's model, loss and optimiser exactly
    recipe = syn.model_copy(update={"model": ref.model, "loss": ref.loss, "optim": ref.optim})
    registry = get_registry()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as Trainer does on CPU
    bundle = DataBundle(recipe, registry, progress=False)
    size = ref.model.text_encoder.options().get("vocab_size", 8803)
    vocab = Vocabulary(bundle.vocab.itos + [f"<filler{i}>" for i in range(size - len(bundle.vocab))])
    bundle.vocab = vocab
    model, loss = build_model(recipe, registry, vocab=vocab)
    t = time.perf_counter()
    bundle.attach_cache(model.backbone, device=torch.device("cpu"), dist_info=DistInfo())
    extract_s = time.perf_counter() - t
    plain = DataBundle(recipe, registry, vocab=vocab, progress=False)  # no cache: reads images
    o = recipe.optim
    params = [p for p in model.parameters() if p.requires_grad]
    opts = [torch.optim.Adam(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=f)
            for f in (None, True)]  # Trainer's default (a for-loop on CPU), and fused
    return recipe, model, loss, opts, bundle, plain, extract_s


def batch_stream(n: int, size: int, seed: int = 0) -> Iterator[list[int]]:
    """Batches without replacement inside an epoch, epochs reshuffled (as DistributedSampler)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen).tolist()
        for i in range(0, n - size + 1, size):
            yield perm[i:i + size]


def train_steps(model, loss, opt, bundle: DataBundle, exprs: ExprSet, order: list[list[int]],
                workers: int = 0) -> tuple[float, list[float], int]:
    """(total s, [data, forward+loss, backward, optimizer] s, distinct images) of Trainer's step."""
    model.train()
    phases, images = [0.0] * 4, 0
    it = bundle.batches(exprs, order, model.tokenize, workers=workers)
    for _ in order:
        t = [time.perf_counter()]
        b = next(it)
        t.append(time.perf_counter())
        out = model(b.text, features=b.features, images=b.images, image_index=b.image_index)
        res = compute_loss(loss, out, b.target, model.head.box_format, model.spec.input_size)
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        res.total.backward()
        t.append(time.perf_counter())
        opt.step()
        t.append(time.perf_counter())
        phases = [p + t[k + 1] - t[k] for k, p in enumerate(phases)]
        images += int(b.image_index.max()) + 1
    return sum(phases), phases, images


def split_note(groups: list) -> str:
    """The median share of data, forward, backward and Adam in a step."""
    share = [statistics.median(g[1][k] / g[0] for g in groups) for k in range(4)]
    return "; ".join(f"{w} {v:.0%}" for w, v in zip(("data", "fwd", "bwd", "Adam"), share, strict=True))


def top_ops(fn, k: int = 6) -> str:
    """The `k` aten ops with the most self CPU time while `fn` runs (torch.profiler)."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:k]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return ", ".join(f"`{e.key}` {e.self_cpu_time_total / total:.0%}" for e in ev)


def lstm_flops(model, tokens: int, backward: bool) -> float:
    """BLSTM FLOPs FlopCounterMode misses: 2 directions x 4 gates x 2H(E+H) a token, x3 with grads."""
    lstm = model.text_encoder.lstm
    fwd = tokens * 2 * 4 * 2 * lstm.hidden_size * (lstm.input_size + lstm.hidden_size)
    return fwd * (3 if backward else 1)


def head_flops(model, loss, bundle: DataBundle, exprs: ExprSet, b: int) -> tuple[float, float]:
    """Heads' FLOPs per sample: (train forward+backward, eval forward), LSTM added by hand."""
    batch = bundle._cached_batch(exprs, list(range(b)), model.tokenize)
    tokens = int(batch.text.mask.sum())
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    def step() -> None:
        out = model(batch.text, features=batch.features, image_index=batch.image_index)
        compute_loss(loss, out, batch.target, model.head.box_format,
                     model.spec.input_size).total.backward()

    model.train()
    train, _ = count_flops(step)
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        ev, _ = count_flops(lambda: model(batch.text, features=batch.features,
                                          image_index=batch.image_index))
    model.load_state_dict(saved)
    return ((train + lstm_flops(model, tokens, True)) / b, (ev + lstm_flops(model, tokens, False)) / b)


def predict_unshared(model, bundle: DataBundle, exprs: ExprSet, batch_size: int) -> None:
    """predict() without per-image sharing: every expression gets its own copy of the maps."""
    model.eval()
    with torch.no_grad():
        for b in bundle.batches(exprs, eval_order(exprs, batch_size), model.tokenize):
            if bundle.cache is not None:  # one cache row per expression, not per image
                rows = bundle.cache.rows([exprs.image_ids[int(exprs.image_of[i])] for i in b.idx])
                model(b.text, features=bundle.cache.get(rows), image_index=None)
            else:  # the backbone runs once per expression
                model(b.text, images=b.images[b.image_index], image_index=None)


def subset(exprs: ExprSet, n_images: int) -> ExprSet:
    """The expressions of the first `n_images` images of a split."""
    sel = (exprs.image_of < n_images).nonzero().squeeze(1)
    return ExprSet([exprs.records[i] for i in sel.tolist()], exprs.image_ids,
                   exprs.image_of[sel], exprs.target[sel], exprs.sizes[sel])


def main() -> None:
    """Run the training and evaluation benchmarks; print and record the tables."""
    args = parse()
    quiet_warnings()
    cfg = QUICK if args.quick else FULL
    m = machine(matmul_gflops())
    print(machine_line(m), file=sys.stderr)
    recipe, model, loss, (opt, fused), bundle, plain, extract_s = setup(args.root, cfg["n_images"])
    train = bundle.split(recipe.data.train_split)
    bb_flops, _ = count_flops(lambda: model.backbone(torch.randn(1, 3, 224, 224)))
    bb = bb_flops / 1e9
    tr_f, ev_f = (f / 1e9 for f in head_flops(model, loss, bundle, train, 20))
    rows = []

    def row(what: str, b: int | str, sps: float, extra_gflop: float, per: float, mms: str,
            mm: float, note: str) -> None:
        gfs = sps * per + extra_gflop
        rows.append([what, b, sps, 1000 / sps, gfs, f"{gfs / mm:.0%}", mms, note])
        print(f"  {what} [{b}]: {sps:.1f}/s (matmul {mms})", file=sys.stderr)

    for b in cfg["batches"]:
        stream, steps = batch_stream(len(train), b), cfg["steps"][b]
        variants = [("", opt)] + ([(" (what-if: Adam fused=True)", fused)] if b == 20 else [])
        for label, optim in variants:

            def cached(stream: Iterator = stream, steps: int = steps, optim=optim) -> list:
                warm = [next(stream) for _ in range(cfg["warmup"])]
                train_steps(model, loss, optim, bundle, train, warm)
                return [train_steps(model, loss, optim, bundle, train,
                                    [next(stream) for _ in range(steps)])
                        for _ in range(cfg["groups"])]

            groups, mm, mms = bracketed(cached)
            sps = statistics.median(steps * b / g[0] for g in groups)
            row(f"train, cached maps{label}", b, sps, 0.0, tr_f, mms, mm,
                f"{cfg['groups']} x {steps} steps; {split_note(groups)}")
    prof = top_ops(lambda: train_steps(model, loss, opt, bundle, train,
                                       [next(batch_stream(len(train), 20, seed=2))]))
    stream = batch_stream(len(train), 20, seed=1)

    def nocache() -> tuple:
        train_steps(model, loss, opt, plain, train, [next(stream)], workers=2)
        return train_steps(model, loss, opt, plain, train,
                           [next(stream) for _ in range(cfg["nocache_steps"])], workers=2)

    (total, phases, imgs), mm, mms = bracketed(nocache)
    n = cfg["nocache_steps"] * 20
    row("train, VGG16 every step (no cache)", 20, n / total, imgs / total * bb, tr_f, mms, mm,
        f"{cfg['nocache_steps']} steps, {imgs / cfg['nocache_steps']:.1f} distinct images a step; "
        f"{split_note([(total, phases)])} (fwd includes VGG16; data = waiting for 2 workers)")
    reps, eb = cfg["repeats"], recipe.train.eval_batch_size
    sub = subset(train, cfg["eval_cached"])
    for shared in (True, False):
        def run(shared: bool = shared) -> None:
            (predict(model, bundle, sub, batch_size=eb) if shared
             else predict_unshared(model, bundle, sub, eb))

        (secs, _), mm, mms = bracketed(lambda run=run: timeit(run, warmup=1, repeats=reps))
        row(f"eval, cached maps, {'shared per image' if shared else 'a copy per expression'}",
            eb, len(sub) / secs, 0.0, ev_f, mms, mm,
            f"{len(sub)} refs of {cfg['eval_cached']} images; "
            + ("cache.get once per image" if shared else "cache.get once per expression"))
    sub = subset(train, cfg["eval_images"])
    for shared in (True, False):
        def run(shared: bool = shared) -> None:
            (predict(model, plain, sub, batch_size=eb) if shared
             else predict_unshared(model, plain, sub, eb))

        (secs, _), mm, mms = bracketed(lambda run=run: timeit(run, warmup=1, repeats=reps))
        runs = cfg["eval_images"] if shared else len(sub)
        row(f"eval, VGG16 from images, {'shared per image' if shared else 'per expression'}",
            eb, len(sub) / secs, runs / secs * bb, ev_f, mms, mm,
            f"{len(sub)} refs of {cfg['eval_images']} images; VGG16 runs {runs} times")
    body = "\n\n".join([
        f"Model: refit-attn-regression's (Table 1: BLSTM 300, image attention 750 x 3, text "
        f"attention 500, regression 450 x 2, IoU + SE + area loss, Adam; vocabulary padded to "
        f"{len(bundle.vocab):,} tokens so the embedding and its Adam state are full size) on a "
        f"synthetic set of {cfg['n_images']} images ({len(train)} training expressions), fp32, "
        "dropout on, `torch.use_deterministic_algorithms(True, warn_only=True)` as Trainer sets "
        f"on CPU. The cache was ready in {extract_s:.1f} s (0 = reused). Training steps mirror "
        "`Trainer.fit` (DataBundle.batches, forward, compute_loss, backward, Adam); evaluation "
        "uses `predict` (shared: each eval batch computes or reads each image once, "
        "`image_index`) or the same loop with every expression given its own maps.",
        f"**FLOPs:** heads (everything but VGG16) {tr_f:.2f} GFLOP per training sample "
        f"(forward + backward, FlopCounterMode at batch 20, BLSTM added by hand; Adam excluded), "
        f"{ev_f:.3f} GFLOP per evaluated expression (forward); VGG16 {bb:.2f} GFLOP per image. "
        "Achieved GFLOP/s = samples/s x heads' FLOPs + VGG16 runs/s x VGG16 FLOPs; "
        "'% of matmul' divides it by the mean matmul GFLOP/s measured around that row. "
        "Notes split a step's time into data (cache read or image loading, tokenize), "
        "forward + loss, backward and the Adam step.",
        f"**Where a batch-20 cached step's time goes** (torch.profiler, self CPU time): {prof}.",
        md_table(["what", "batch", "samples or refs/s", "ms each", "achieved GFLOP/s",
                  "% of matmul", "matmul GFLOP/s before/after", "notes"], rows)])
    text = section("Training and evaluation (`bench_train.py`)", m, body)
    print(text)
    if not args.no_write:
        print(f"\nwrote {append_results(NAME, text)}", file=sys.stderr)


if __name__ == "__main__":
    main()
