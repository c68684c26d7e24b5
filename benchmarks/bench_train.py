"""Training samples/s and evaluation refs/s of the paper's model, with and without the cache."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from common import (
    DEFAULT_ROOT,
    add_quiet_options,
    best_interleaved,
    count_flops,
    machine,
    machine_line,
    matmul_gflops,
    md_table,
    onednn_gflops,
    publish,
    quiet_warnings,
    require_quiet,
)

from vgkit.data.synth import ensure_synthetic
from vgkit.distributed import DistInfo
from vgkit.engine.bundle import DataBundle, ExprSet, eval_order
from vgkit.engine.evaluate import predict
from vgkit.engine.memory import keep_freed_memory
from vgkit.engine.train import found_inf
from vgkit.model import build_model, compute_loss
from vgkit.plugins import get_registry
from vgkit.recipe import load_recipe
from vgkit.text import Vocabulary

NAME = "bench_train"
QUICK = {"n_images": 24, "batches": (20, 48), "steps": {20: 2, 48: 1}, "eval_cached": 8,
         "repeats": 2}
FULL = {"n_images": 128, "batches": (20, 256), "steps": {20: 6, 256: 1}, "eval_cached": 32,
        "repeats": 5}


def parse() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: finishes in < 2 minutes")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where data and caches go")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    add_quiet_options(p)
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
    keep_freed_memory()  # as Trainer does on CPU
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
    opt = torch.optim.Adam(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=True)
    return recipe, model, loss, opt, bundle, plain, extract_s  # Adam fused, as Trainer has it


def batch_stream(n: int, size: int, seed: int = 0) -> Iterator[list[int]]:
    """Batches without replacement inside an epoch, epochs reshuffled (as DistributedSampler)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen).tolist()
        for i in range(0, n - size + 1, size):
            yield perm[i:i + size]


def train_steps(model, loss, opt, bundle: DataBundle, exprs: ExprSet, order: list[list[int]],
                workers: int = 0) -> tuple[float, int]:
    """(seconds, distinct images) of Trainer's step over `order`: data, forward, loss, backward,
    the finite check, Adam."""
    model.train()
    images = 0
    params = [p for g in opt.param_groups for p in g["params"]]
    one = torch.ones(())
    t = time.perf_counter()
    for b in bundle.batches(exprs, order, model.tokenize, workers=workers):
        out = model(b.text, features=b.features, images=b.images, image_index=b.image_index)
        res = compute_loss(loss, out, b.target, model.head.box_format, model.spec.input_size)
        opt.zero_grad(set_to_none=True)
        res.total.backward()
        found = found_inf(res.total, params, one)  # Trainer's check, read every step on the CPU
        opt.found_inf = found
        opt.step()
        if found.item():
            raise SystemExit("a training step of the benchmark was not finite")
        images += int(b.image_index.max()) + 1
    return time.perf_counter() - t, images


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


def one_per_image(exprs: ExprSet) -> ExprSet:
    """The first expression of each image: batches of distinct images."""
    first: dict[int, int] = {}
    for i, img in enumerate(exprs.image_of.tolist()):
        first.setdefault(img, i)
    sel = torch.tensor(sorted(first.values()))
    return ExprSet([exprs.records[i] for i in sel.tolist()], exprs.image_ids,
                   exprs.image_of[sel], exprs.target[sel], exprs.sizes[sel])


def main() -> None:
    """Run the training and evaluation figures interleaved; print and record the table."""
    args = parse()
    quiet_warnings()
    busy = require_quiet(args)
    cfg = QUICK if args.quick else FULL
    m = machine(matmul_gflops(), onednn_gflops())
    print(machine_line(m), file=sys.stderr)
    recipe, model, loss, opt, bundle, plain, extract_s = setup(args.root, cfg["n_images"])
    train = bundle.split(recipe.data.train_split)
    bb_flops, _ = count_flops(lambda: model.backbone(torch.randn(1, 3, 224, 224)))
    bb = bb_flops / 1e9
    tr_f, ev_f = (f / 1e9 for f in head_flops(model, loss, bundle, train, 20))
    eb = recipe.train.eval_batch_size
    sub = subset(train, cfg["eval_cached"])
    distinct: dict[str, float] = {}  # distinct images a step of the no-cache figure

    def training(b: int, data: DataBundle = bundle, workers: int = 0, key: str = "",
                 exprs: ExprSet = train) -> Callable:
        stream, steps = batch_stream(len(exprs), b), cfg["steps"][b]

        def rate() -> float:
            total, images = train_steps(model, loss, opt, data, exprs,
                                           [next(stream) for _ in range(steps)], workers=workers)
            if key:
                distinct[key] = images / steps
            return steps * b / total
        return rate

    def evaluating(shared: bool) -> Callable:
        def rate() -> float:
            t = time.perf_counter()
            (predict(model, bundle, sub, batch_size=eb) if shared
             else predict_unshared(model, bundle, sub, eb))
            return len(sub) / (time.perf_counter() - t)
        return rate

    b_small, b_big = cfg["batches"]
    figures = {
        f"train, cached maps [{b_small}]": training(b_small),
        f"train, cached maps [{b_big}]": training(b_big),
        f"eval, cached maps, shared per image [{eb}]": evaluating(True),
        f"eval, cached maps, a copy per expression [{eb}]": evaluating(False),
        # one expression an image, so each step reads b distinct images, as on ReferIt
        f"train, VGG16 every step, no cache [{b_small}]": training(b_small, plain, 2, "nocache",
                                                                   one_per_image(train)),
    }
    for fn in figures.values():  # warm-up: first-touch allocations, thread pools
        fn()
    best, beside, top, top_onednn = best_interleaved(figures, cfg["repeats"])
    prof = top_ops(lambda: train_steps(model, loss, opt, bundle, train,
                                       [next(batch_stream(len(train), 20, seed=2))]))
    rows = []
    for name, rate in best.items():
        per = ev_f if name.startswith("eval") else tr_f
        extra = rate / b_small * distinct["nocache"] * bb if "no cache" in name else 0.0
        gfs = rate * per + extra
        rows.append([name, rate, 1000 / rate, gfs, f"{gfs / top:.0%}", f"{gfs / beside[name]:.0%}",
                     beside[name], f"{gfs / max(top, top_onednn):.0%}"])
    cached = best[f"train, cached maps [{b_small}]"]
    naive = best[f"train, VGG16 every step, no cache [{b_small}]"]
    body = "\n\n".join([
        f"Model: refit-attn-regression's (Table 1: BLSTM 300, image attention 750 x 3, text "
        f"attention 500, regression 450 x 2, IoU + SE + area loss, Adam; vocabulary padded to "
        f"{len(bundle.vocab):,} tokens so the embedding and its Adam state are full size) on a "
        f"synthetic set of {cfg['n_images']} images ({len(train)} training expressions), fp32, "
        "dropout on (vgkit.layers.Dropout), glibc keeping freed memory and "
        "`torch.use_deterministic_algorithms(True, warn_only=True)` as Trainer sets on CPU. "
        f"The cache was ready in {extract_s:.1f} s (0 = reused). Training steps mirror "
        "`Trainer.fit` (DataBundle.batches, forward, compute_loss, backward, the finite check, "
        "fused Adam); evaluation "
        "uses `predict` (shared: each eval batch reads each image's maps once) or the same "
        "loop with every expression given its own copy of the maps.",
        f"**FLOPs:** heads (everything but VGG16) {tr_f:.2f} GFLOP per training sample "
        f"(forward + backward, FlopCounterMode at batch 20, BLSTM added by hand; Adam excluded), "
        f"{ev_f:.3f} GFLOP per evaluated expression (forward); VGG16 {bb:.2f} GFLOP per image "
        f"({distinct['nocache']:.1f} distinct images a step without the cache). Achieved "
        "GFLOP/s = samples/s x heads' FLOPs (+ VGG16 runs/s x its FLOPs).",
        f"**Method:** each figure is the best of {cfg['repeats']} rounds; a round runs every "
        "figure once, each right after a matmul measurement (2048², median of 3), so a burst "
        "of load spreads over all figures. '% of best matmul' divides by the best matmul of the "
        f"whole run ({top:.0f} GFLOP/s); '% of matmul beside' by the one measured just before "
        "that figure's best round. The heads' big products run as oneDNN 1x1 convolutions "
        "(vgkit.layers.Linear), which on some CPUs beat torch's matmul (the BLAS): '% of best "
        "GEMM' divides by the faster of the best matmul and the best oneDNN 1x1 convolution of "
        f"the same 2048² product ({top_onednn:.0f} GFLOP/s, measured once a round).",
        f"**Cached maps against VGG16 every step, batch {b_small}: {cached / naive:.1f}x** "
        f"the samples/s ({cached:.1f} against {naive:.2f}).",
        f"**Where a batch-20 cached step's time goes** (torch.profiler, self CPU time): {prof}.",
        md_table(["what [batch]", "samples or refs/s", "ms each", "achieved GFLOP/s",
                  "% of best matmul", "% of matmul beside", "matmul beside", "% of best GEMM"],
                 rows)])
    publish(NAME, "Training and evaluation (`bench_train.py`)", m, body, busy, args)


if __name__ == "__main__":
    main()
