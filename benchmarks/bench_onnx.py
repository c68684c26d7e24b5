"""Latency of an exported model: onnxruntime against PyTorch on this CPU, same inputs.

For each trained run: export it (``vgkit.export.export_onnx``, which checks parity), then
ground dataset images with ``Grounder.predict`` (PyTorch) and ``OnnxGrounder.predict``
(onnxruntime), one (image, phrase) at a time and in a batch of 8, interleaved round by
round so both see the same machine load. Both time the whole call: preprocessing
(resize, normalise, tokenize), the forward pass and the box mapped back to the image.

    python benchmarks/bench_onnx.py --checkpoint runs/demo [--checkpoint RUN2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

from common import (
    DEFAULT_ROOT,
    append_results,
    bracketed,
    machine,
    matmul_gflops,
    md_table,
    section,
)

import vgkit
from vgkit.api import open_image
from vgkit.data.samples import dataset_samples
from vgkit.export import OnnxGrounder, export_onnx


def bench_run(run: str, rounds: int, root: Path) -> list[list[object]]:
    """Export `run`, time both runtimes at batch 1 and 8: the table rows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = vgkit.load(run, device="cpu")
    out = root / "onnx" / Path(run).name / "model.onnx"
    r = export_onnx(g, out)
    onnx = OnnxGrounder(out)
    samples = dataset_samples(g.recipe, 8)
    images = [open_image(s.file) for s in samples]
    phrases = [s.phrase for s in samples]
    timed = {"PyTorch": g.predict, "onnxruntime": onnx.predict}
    times: dict[tuple[str, int], list[float]] = {}

    def one_round(keep: bool = True) -> None:
        for name, fn in timed.items():
            for batch in (1, len(images)):
                t = time.perf_counter()
                fn(images[:batch] if batch > 1 else images[0],
                   phrases[:batch] if batch > 1 else phrases[0])
                if keep:
                    times.setdefault((name, batch), []).append(time.perf_counter() - t)

    brackets = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one_round(keep=False)  # warm-up
        for _ in range(rounds):
            _, _, br = bracketed(one_round)
            brackets.append(br)
    rows: list[list[object]] = []
    for (name, b), ts in sorted(times.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ms = statistics.median(ts) * 1000
        rows.append([g.recipe.name, "x".join(map(str, g.recipe.data.image_size)), name, b,
                     f"{ms:.1f}", f"{ms / b:.1f}", f"{max(r.box_px, r.heads_box_px):.6f}"])
    rows.append([g.recipe.name, "", "matmul GFLOP/s before/after each round", "", "", "",
                 " ".join(brackets)])
    return rows


def main() -> None:
    """Export each run, time both runtimes, print (and write) the Markdown section."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", required=True, help="a run (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    m = machine(matmul_gflops())
    rows = [row for run in args.checkpoint for row in bench_run(run, args.rounds, args.root)]
    body = ("Whole calls on dataset images (preprocess, forward, box to original pixels), fp32, "
            f"median of {args.rounds} rounds after a warm-up; PyTorch `Grounder.predict` and "
            "onnxruntime `OnnxGrounder.predict` alternate within each round. Parity: the "
            "export's own check, largest box difference in original pixels over 8 images.\n\n"
            + md_table(["recipe", "input", "runtime", "batch", "ms per call", "ms per phrase",
                        "parity px"], rows))
    text = section("ONNX export: onnxruntime vs PyTorch (`bench_onnx.py`)", m, body)
    print(text)
    if not args.no_write:
        append_results("bench_onnx", text)


if __name__ == "__main__":
    main()
