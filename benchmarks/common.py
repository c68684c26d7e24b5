"""Shared helpers of the benchmarks: matmul peak, machine line, timing, tables, RESULTS.md."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
DEFAULT_ROOT = Path(os.environ.get("VGKIT_BENCH_ROOT", "/tmp/vgkit-bench"))
RESULTS_HEADER = """# vgkit benchmark results

Written by the scripts in this folder (see README.md); each section is replaced
when its script runs again. Every speed is printed next to the fp32 matmul
GFLOP/s measured in the same run (2048 x 2048, median of 5), so numbers taken
while the machine was busy can be read relative to its state at the time.
"""


BUSY_LOAD = 0.5  # a 1-minute load average above this means other jobs share the CPUs


def load_average() -> float:
    """The 1-minute load average (0.0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def add_quiet_options(p: Any) -> None:
    """--wait-quiet and --allow-busy on an argparse parser (see :func:`require_quiet`)."""
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help=f"wait up to this long for the load average to drop below {BUSY_LOAD}")
    p.add_argument("--allow-busy", action="store_true",
                   help="measure and write RESULTS.md on a busy machine, marked as such")


def require_quiet(args: Any) -> str:
    """Refuse to measure for RESULTS.md on a busy machine: '' when quiet, else a warning line.

    On a shared machine small ops slow down far more than the matmul reference, so a
    busy machine's "% of matmul" is too low by up to 8x. Refused (exit 2) unless
    --no-write (numbers printed only) or --allow-busy (written, marked busy).
    """
    deadline = time.monotonic() + args.wait_quiet
    while load_average() > BUSY_LOAD and time.monotonic() < deadline:
        time.sleep(5)
    load = load_average()
    if load <= BUSY_LOAD:
        return ""
    line = (f"**Busy machine:** load average {load:.2f} (> {BUSY_LOAD}) when this run started; "
            "small ops slow down more than the matmul, so these percentages are too low.")
    if getattr(args, "no_write", False) or args.allow_busy:
        print(f"warning: {line}", file=sys.stderr)
        return line
    sys.exit(f"refused: load average {load:.2f} > {BUSY_LOAD}: other jobs share this machine, "
             "and its numbers would go into RESULTS.md. Wait (--wait-quiet SECONDS), print "
             "only (--no-write), or write them marked busy (--allow-busy).")


def best_interleaved(figures: dict[str, Callable[[], float]], repeats: int,
                     ) -> tuple[dict[str, float], dict[str, float], float, float]:
    """Each figure's best rate over `repeats` rounds, every figure once a round after a matmul.

    Returns (best rate of each figure, the matmul GFLOP/s measured just before that best,
    the best matmul GFLOP/s of the whole run, the best oneDNN 1x1-convolution GFLOP/s of
    the whole run, measured once a round). Interleaving spreads a burst of load over all
    figures instead of spoiling one; the best of several is the least disturbed.
    """
    best: dict[str, float] = {}
    beside: dict[str, float] = {}
    top = top_onednn = 0.0
    for r in range(repeats):
        top_onednn = max(top_onednn, onednn_gflops(repeats=3))
        for name, fn in figures.items():
            mm = matmul_gflops(repeats=3)
            top = max(top, mm)
            rate = fn()
            print(f"  round {r + 1}/{repeats} {name}: {rate:,.2f}/s (matmul {mm:.0f})",
                  file=sys.stderr)
            if rate > best.get(name, 0.0):
                best[name], beside[name] = rate, mm
    return best, beside, top, top_onednn


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Median fp32 GFLOP/s of an n x n torch matmul (after one warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    secs, _ = timeit(lambda: a @ b, warmup=0, repeats=repeats)
    return 2 * n**3 / secs / 1e9


def onednn_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Median fp32 GFLOP/s of the same n x n product as a 1x1 convolution (oneDNN's code).

    torch sends a matmul to the BLAS and a convolution to oneDNN; on some CPUs (AMD's,
    where MKL runs its AVX2 code) oneDNN is much the faster, and vgkit.layers.Linear uses
    it. Reported beside the matmul so a figure above 100% of matmul can be read.
    """
    x = torch.randn(1, n, n, 1).contiguous(memory_format=torch.channels_last)
    w = torch.randn(n, n, 1, 1)
    with torch.no_grad():
        torch.nn.functional.conv2d(x, w)
        secs, _ = timeit(lambda: torch.nn.functional.conv2d(x, w), warmup=0, repeats=repeats)
    return 2 * n**3 / secs / 1e9


def timeit(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5) -> tuple[float, list[float]]:
    """(median seconds, all seconds) of `fn` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def bracketed(fn: Callable[[], Any]) -> tuple[Any, float, str]:
    """Run `fn` between two matmul measurements: (its result, their mean, "before/after")."""
    before = matmul_gflops()
    out = fn()
    after = matmul_gflops()
    return out, (before + after) / 2, f"{before:.0f}/{after:.0f}"


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of `fn` under FlopCounterMode, and the counts per aten op."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    per_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else platform.processor() or "unknown CPU"


def machine(gflops: float, onednn: float | None = None) -> dict[str, Any]:
    """CPU, cores, torch version, threads, load average, the matmul GFLOP/s given and
    (where given) the oneDNN 1x1-convolution GFLOP/s."""
    try:
        load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "n/a"
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "load": load, "matmul_gflops": gflops, "onednn_gflops": onednn}


def machine_line(m: dict[str, Any]) -> str:
    """One Markdown line describing the machine and its measured matmul speed."""
    onednn = m.get("onednn_gflops")
    return (f"**Machine:** {m['cpu']}, {m['cores']} logical cores, torch {m['torch']} "
            f"({m['threads']} threads), Python {m['python']}; load average {m['load']} at start; "
            f"**fp32 matmul {m['matmul_gflops']:.1f} GFLOP/s** (2048², median of 5, this run)"
            + (f"; the same product as a oneDNN 1x1 convolution {onednn:.1f} GFLOP/s"
               if onednn else ""))


def command_line() -> str:
    """The exact command that ran this script, relative to the repository root."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(RESULTS.parent.parent)
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats are shown with a sensible number of digits."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def section(title: str, m: dict[str, Any], body: str, busy: str = "") -> str:
    """A RESULTS.md section: title, date, command, machine line, busy warning, then `body`."""
    return "\n\n".join([
        f"## {title}",
        f"**Date:** {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  \n**Command:** `{command_line()}`",
        machine_line(m), *([busy] if busy else []), body.strip()])


def publish(name: str, title: str, m: dict[str, Any], body: str, busy: str, args: Any) -> None:
    """Print the section and, unless --no-write, replace section `name` of RESULTS.md."""
    text = section(title, m, body, busy)
    print(text)
    if not args.no_write:
        print(f"\nwrote {append_results(name, text)}", file=sys.stderr)


def append_results(name: str, markdown: str, path: Path = RESULTS) -> Path:
    """Write `markdown` between ``<!-- name:start -->`` and ``<!-- name:end -->`` in `path`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.is_file() else RESULTS_HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    return path


def quiet_warnings() -> None:
    """Silence the random-weights warning: benchmarks need shapes and FLOPs, not features."""
    import warnings

    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
    warnings.filterwarnings("ignore", message=".*NumPy array is not writable.*")
