"""The GPU check, in one process: draw, extract, train, evaluate; images/s, samples/s, peak memory.

Run by ``benchmarks/gpu.sh`` on a machine with a CUDA GPU (any device works, for a dry
run: ``--device cpu --n-images 40 --epochs 1``). Writes its section of RESULTS.md
(``gpu``) and, with ``--copy-to DIR``, the same Markdown to DIR/gpu-results.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from common import append_results, machine, matmul_gflops, md_table, quiet_warnings, section


def _peak(device: torch.device) -> tuple[int, str]:
    from vgkit.engine.run import peak_memory

    return peak_memory(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, default=Path("/tmp/vgkit-gpu"))
    ap.add_argument("--n-images", type=int, default=20_000)
    ap.add_argument("--width", type=int, default=480)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=20, help="training batch (the paper's 20)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--copy-to", type=Path, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    quiet_warnings()
    from vgkit.api import train
    from vgkit.data.features import extract_dataset
    from vgkit.data.synth import ensure_synthetic
    from vgkit.engine.evaluate import accuracy
    from vgkit.engine.run import evaluate_checkpoint

    dev = torch.device(args.device)
    gflops = matmul_gflops() if dev.type == "cpu" else float("nan")
    m = machine(gflops)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "none (dry run)"
    syn, run = args.root / "syn", args.root / "run"
    rows = []

    t0 = time.perf_counter()
    index = ensure_synthetic(syn, n_images=args.n_images, seed=0,
                             image_size=(args.width, args.height))
    rows.append(("draw synthetic scenes", f"{args.n_images:,} images {args.width}x{args.height}",
                 f"{time.perf_counter() - t0:.1f} s", f"{args.n_images / (time.perf_counter() - t0):.1f} images/s", "-"))

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    cache = extract_dataset("synthetic", "vgg16", root=syn, image_size=224, batch_size=128,
                            workers=args.workers, device=args.device)
    secs = time.perf_counter() - t0
    mem = _peak(dev)
    rows.append(("extract VGG16 conv5_3 (fp16 cache)", f"{len(cache):,} images",
                 f"{secs:.1f} s", f"{len(cache) / secs:.1f} images/s",
                 f"{mem[0] / 2**20:,.0f} MiB ({mem[1]})"))

    if run.exists():
        shutil.rmtree(run)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    train("synthetic-attn-regression", run,
          [f"data.root={syn}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
           f"train.workers={args.workers}"], device=args.device, progress=False)
    secs = time.perf_counter() - t0
    mem = _peak(dev)
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [x["samples_per_s"] for x in logged if x.get("event") == "train"]
    n_train = sum(1 for r in index if r.split == "train")
    rows.append((f"train {args.epochs} epochs, batch {args.batch_size}, cached maps",
                 f"{n_train:,} expressions an epoch", f"{secs:.1f} s",
                 f"{sorted(rates)[len(rates) // 2] if rates else float('nan'):,.0f} samples/s "
                 "(median of the logged steps)", f"{mem[0] / 2**20:,.0f} MiB ({mem[1]})"))

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    ev = evaluate_checkpoint(run, split="test", device=args.device, progress=False)
    acc = accuracy(ev.preds)
    mem = _peak(dev)
    rows.append(("evaluate the test split", f"{acc['n']:,} expressions",
                 f"{ev.seconds:.1f} s", f"{acc['scored'] / max(ev.seconds, 1e-9):,.0f} refs/s",
                 f"{mem[0] / 2**20:,.0f} MiB ({mem[1]})"))

    body = (f"GPU: **{gpu}**; device `{args.device}`. Test Acc@0.5 after {args.epochs} epochs: "
            f"{100 * acc['acc@0.5']:.2f}% (random VGG16 maps; a speed check, not an accuracy "
            "result).\n\n" + md_table(["phase", "size", "wall", "rate", "peak memory"], rows))
    md = section("GPU check (`gpu_run.py`, run by `gpu.sh`)", m, body)
    print(md)
    if not args.no_write:
        append_results("gpu", md)
    if args.copy_to is not None:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        (args.copy_to / "gpu-results.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
