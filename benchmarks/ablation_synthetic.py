"""Table 3's ablations on the synthetic dataset, over several seeds: mean +- std of test Acc@0.5.

Runs the CLI, exactly as a user would, for each recipe and seed:

    vgkit train --recipe R --root ROOT --set train.seed=S --out OUT/R-sS --quiet
    vgkit eval --checkpoint OUT/R-sS --root ROOT --split test

`--jobs 2` runs two trainings at once with one thread each (on a 2-core machine that is
faster than one run with two threads). Finished runs (with their eval-test.json) are
reused, so an interrupted sweep continues. The table goes to stdout and OUT/ablation.md.

    python benchmarks/ablation_synthetic.py --root data/synthetic --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RECIPES = (  # (recipe, the Table 3 row it stands for, the paper's ReferIt number)
    ("synthetic-attn-regression", "Full (IA, TA, L_A)", "37.26"),
    ("synthetic-no-text-attention", "- Text attention", "35.55"),
    ("synthetic-no-attention", "- Text and image attention", "29.43"),
    ("synthetic-no-attention-loss", "- L_A (where the paper drops L_S)", "35.41"),
)


def run_one(recipe: str, seed: int, root: Path, out: Path) -> dict:
    """Train and evaluate one (recipe, seed); return the test metrics and the wall time."""
    run = out / f"{recipe}-s{seed}"
    result = run / "eval-test.json"
    if result.exists():
        return {**json.loads(result.read_text()), "reused": True}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    vgkit = [sys.executable, "-m", "vgkit"]
    t0 = time.time()
    subprocess.run([*vgkit, "train", "--recipe", recipe, "--root", str(root), "--set",
                    f"train.seed={seed}", "--out", str(run), "--quiet"], check=True, env=env)
    subprocess.run([*vgkit, "eval", "--checkpoint", str(run), "--root", str(root), "--split",
                    "test"], check=True, env=env, stdout=subprocess.DEVNULL)
    data = json.loads(result.read_text())
    data["wall_s"] = time.time() - t0
    result.write_text(json.dumps(data, indent=1))
    return data


def table(results: dict[tuple[str, int], dict], seeds: list[int]) -> str:
    """Markdown: one row per recipe, mean +- std over seeds, and each seed's number."""
    lines = ["| recipe | Table 3 row | paper (ReferIt) | test Acc@0.5, mean ± std | per seed |",
             "|---|---|---|---|---|"]
    for recipe, row, paper in RECIPES:
        accs = [100 * results[(recipe, s)]["acc@0.5"] for s in seeds]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        per = ", ".join(f"{a:.2f}" for a in accs)
        lines.append(f"| `{recipe}` | {row} | {paper}% | **{statistics.mean(accs):.2f} ± {std:.2f}%** | {per} |")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run every (recipe, seed), print and save the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("data/synthetic"))
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(r, s) for s in args.seeds for r, _, _ in RECIPES]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = dict(zip(jobs, pool.map(lambda j: run_one(*j, args.root, args.out), jobs), strict=True))
    md = table(done, args.seeds)
    (args.out / "ablation.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
