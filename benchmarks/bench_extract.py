"""VGG16 conv5_3 extraction images/s, achieved GFLOP/s, and feature-cache read throughput."""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import (
    DEFAULT_ROOT,
    add_quiet_options,
    bracketed,
    count_flops,
    machine,
    machine_line,
    matmul_gflops,
    md_table,
    onednn_gflops,
    publish,
    quiet_warnings,
    require_quiet,
    timeit,
)
from vgkit_endo2017.backbones import BackboneOptions, build_vgg16

from vgkit.data.features import FeatureCache, extract_features, image_table
from vgkit.data.images import ImageTransform, read_image
from vgkit.data.synth import ensure_synthetic

NAME = "bench_extract"


def parse() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: finishes in < 2 minutes")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where data and caches go")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    add_quiet_options(p)
    return p.parse_args()


def extraction_rows(args: argparse.Namespace, cfg: dict, backbone: torch.nn.Module,
                    gflop: float) -> tuple[list, Path]:
    """Time extract_features per (batch size, workers); also backbone-only and decoding."""
    data = args.root / f"synthetic-{cfg['n_images']}"
    index = ensure_synthetic(data, n_images=cfg["n_images"], image_size=(320, 240), progress=False)
    images = image_table(index)
    n, transform = len(images), ImageTransform((224, 224))
    reps, rows, work = cfg["repeats"], [], args.root / "extract-runs"
    shutil.rmtree(work, ignore_errors=True)

    def decode() -> None:
        for _, path in images:
            transform(read_image(data / path))

    (secs, _), _, mms = bracketed(lambda: timeit(decode, warmup=1, repeats=reps))
    rows.append(["decode + resize + normalise only (main process)", "-", 0, n / secs,
                 1000 * secs / n, "-", "-", mms])
    keep = None
    for bs in cfg["batch_sizes"]:
        x = torch.randn(bs, 3, 224, 224)
        (secs, _), mm, mms = bracketed(
            lambda x=x: timeit(lambda: backbone(x), warmup=1, repeats=reps))
        ips = bs / secs
        rows.append(["backbone forward only (random input)", bs, "-", ips, 1000 / ips,
                     ips * gflop, f"{ips * gflop / mm:.0%}", mms])
        for workers in cfg["workers"]:

            def runs(bs: int = bs, workers: int = workers) -> list[float]:
                times = []
                for r in range(reps + 1):  # run 0 warms up the DataLoader and oneDNN shapes
                    out = work / f"bs{bs}-w{workers}-r{r}"
                    t = time.perf_counter()
                    extract_features(backbone, transform, index, data, out, batch_size=bs,
                                     workers=workers, progress=False)
                    if r:
                        times.append(time.perf_counter() - t)
                return times

            times, mm, mms = bracketed(runs)
            ips = n / statistics.median(times)
            rows.append(["extract_features (read, decode, VGG16, write fp16)", bs, workers, ips,
                         1000 / ips, ips * gflop, f"{ips * gflop / mm:.0%}", mms])
            print(f"  extract bs={bs} workers={workers}: {ips:.2f} images/s "
                  f"(matmul {mms} GFLOP/s)", file=sys.stderr)
            keep = work / f"bs{bs}-w{workers}-r{reps}"
    assert keep is not None
    return rows, keep


def fake_cache(directory: Path, n: int) -> FeatureCache:
    """A cache-shaped float16 memmap of `n` random maps, opened as a FeatureCache."""
    directory.mkdir(parents=True, exist_ok=True)
    arr = np.lib.format.open_memmap(directory / "features.npy", mode="w+", dtype=np.float16,
                                    shape=(n, 512, 14, 14))
    rng = np.random.default_rng(0)
    for i in range(0, n, 256):
        k = min(256, n - i)
        arr[i:i + k] = rng.standard_normal((k, 512, 14, 14), dtype=np.float32).astype(np.float16)
    arr.flush()
    del arr
    return FeatureCache(directory, {"image_ids": [f"img{i}" for i in range(n)]})


def cache_rows(cache: FeatureCache, label: str, reps: int, batches: int) -> list:
    """Random 20-row get() batches (maps/s, MB/s) and load_all (MB/s) of one cache."""
    n = len(cache)
    row_mb = cache.features[0].nbytes / 1e6
    gen = torch.Generator().manual_seed(0)
    draws = [torch.randint(n, (20,), generator=gen) for _ in range(batches)]

    def gets() -> None:
        for rows in draws:
            cache.get(rows)

    def measure() -> list[float]:
        return [timeit(f, warmup=1, repeats=reps)[0] for f in
                (gets, cache.load_all, lambda: torch.from_numpy(np.array(cache.features)))]

    (get_s, lazy_s, copy_s), _, mms = bracketed(measure)
    size = f"{n * row_mb:.0f}"
    return [[label, n, size, "get(20 random rows)", 20 * batches / get_s,
             20 * batches * row_mb / get_s, 1000 * get_s / batches, mms],
            [label, n, size, "load_all() (CPU: a tensor over the memmap, no bytes read)",
             "-", "-", 1000 * lazy_s, mms],
            [label, n, size, "whole cache copied to RAM: from_numpy(np.array(features))", n / copy_s,
             n * row_mb / copy_s, 1000 * copy_s, mms]]


def main() -> None:
    """Run the extraction and cache-read benchmarks; print and record the tables."""
    args = parse()
    quiet_warnings()
    busy = require_quiet(args)
    cfg = ({"n_images": 8, "batch_sizes": (8,), "workers": (0, 2), "repeats": 1,
            "big": 256, "batches": 50} if args.quick else
           {"n_images": 64, "batch_sizes": (8, 32), "workers": (0, 2), "repeats": 3,
            "big": 2000, "batches": 200})
    m = machine(matmul_gflops(), onednn_gflops())
    print(machine_line(m), file=sys.stderr)
    bb = build_vgg16(BackboneOptions())
    bb.identity()  # the weights digest is computed once, outside the timings
    flops, per_op = count_flops(lambda: bb(torch.randn(1, 3, 224, 224)))
    gflop = flops / 1e9
    ext, keep = extraction_rows(args, cfg, bb, gflop)
    cache = cache_rows(FeatureCache.open(keep), f"extracted ({cfg['n_images']} images)",
                       cfg["repeats"] + 2, cfg["batches"])
    big_dir = args.root / "fake-cache"
    cache += cache_rows(fake_cache(big_dir, cfg["big"]), "random fp16 maps",
                        cfg["repeats"] + 2, cfg["batches"])
    shutil.rmtree(big_dir)
    shutil.rmtree(keep.parent)
    ops = ", ".join(f"{k.split('.')[-1]} {v / 1e9:.2f}" for k, v in per_op.items())
    body = "\n\n".join([
        f"Synthetic dataset of {cfg['n_images']} images at 320x240 JPEG, stretched to 224x224; "
        f"frozen VGG16 (random weights, same FLOPs) up to conv5_3 + ReLU, channels_last, fp32, "
        f"{cfg['repeats']} timed repeats after a warm-up, median. "
        f"**Backbone FLOPs: {gflop:.2f} GFLOP per 224x224 image** (FlopCounterMode, one "
        f"forward; by op: {ops}). Achieved GFLOP/s = images/s x {gflop:.2f}; '% of matmul' "
        "divides it by the mean of the fp32 matmul GFLOP/s measured just before and just after "
        "that row (last column); VGG16's convolutions run in oneDNN, which on some CPUs is much "
        "faster than the BLAS behind the matmul (the machine line gives both rates), so this "
        "can pass 100%. get() MB/s counts the bytes of the maps returned.",
        "### Extraction\n\n" + md_table(
            ["what", "batch", "workers", "images/s", "ms/image", "achieved GFLOP/s",
             "% of matmul", "matmul GFLOP/s before/after"], ext),
        "### Feature-cache reads (float16 [512, 14, 14] = 0.2 MB a map; warm page cache)\n\n"
        + md_table(["cache", "maps", "MB", "operation", "maps/s", "MB/s", "ms per call",
                    "matmul GFLOP/s before/after"], cache)])
    publish(NAME, "Feature extraction and cache reads (`bench_extract.py`)", m, body, busy, args)


if __name__ == "__main__":
    main()
