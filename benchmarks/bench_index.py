"""The dataset index: `vgkit data prepare referit` time and peak memory, bytes per expression,
and an index of a million synthetic records built, saved, loaded and queried.

The index holds its records as columns (numpy arrays, categorical codes, packed phrases
and token ids) and builds a Record when one is read: bytes per record are what the
columns hold, measured on the index itself: loaded from records.jsonl (everything it
holds), and built from Records (less the strings it shares with them)."""

from __future__ import annotations

import argparse
import functools
import gc
import os
import random
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from common import (
    DEFAULT_ROOT,
    add_quiet_options,
    machine,
    machine_line,
    matmul_gflops,
    md_table,
    publish,
    require_quiet,
)

from vgkit.data.index import DatasetIndex, Record
from vgkit.data.referit import DEFAULT_SPLITS, load_referit
from vgkit.text import tokenize

NAME = "bench_index"
WORDS = ("man", "woman", "left", "right", "red", "blue", "small", "big", "the", "on", "of", "in",
         "car", "tree", "dog", "sky", "building", "top", "bottom", "middle", "white", "black",
         "person", "shirt", "water", "grass", "road", "front", "back", "two", "three")


def parse() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--referit", type=Path, default=os.environ.get("VGKIT_REFERIT_ANNOTATIONS"),
                   help="ReferIt's hu-form annotations (default: $VGKIT_REFERIT_ANNOTATIONS)")
    p.add_argument("--records", type=int, default=1_000_000, help="size of the synthetic index")
    p.add_argument("--rounds", type=int, default=3, help="repeats of each timing (best kept)")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where indexes are written")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    add_quiet_options(p)
    return p.parse_args()


# Launched from a small Python without torch: a child's peak RSS (ru_maxrss) starts from
# its parent's at fork, and this process has torch loaded.
_LAUNCH = """
import os, subprocess, sys, time
t = time.perf_counter()
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
secs = time.perf_counter() - t
print(code, secs, __import__("resource").getrusage(__import__("resource").RUSAGE_CHILDREN).ru_maxrss)
"""


def prepare_cli(root: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of `vgkit data prepare referit` in a fresh process."""
    shutil.rmtree(out, ignore_errors=True)
    vgkit = Path(sys.executable).with_name("vgkit")
    res = subprocess.run([sys.executable, "-c", _LAUNCH, str(vgkit), "data", "prepare", "referit",
                          "--root", str(root), "--out", str(out)],
                         capture_output=True, text=True, check=True)
    code, secs, kb = res.stdout.split()
    if int(code):
        sys.exit(f"vgkit data prepare referit failed (exit {code})")
    return float(secs), int(kb) / 1024


def bytes_per_record(build) -> tuple[object, float]:
    """(what `build` returns, bytes it holds per record after a gc: tracemalloc's count)."""
    gc.collect()
    tracemalloc.start()
    out = build()
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, held / len(out)


def synthetic_records(n: int, seed: int = 0) -> list[Record]:
    """`n` records, 4 phrases an image, 3-8 words each, 80/10/10 train/val/test by image."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        image = i // 4
        phrase = " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))
        split = ("train", "train", "train", "train", "train", "train", "train", "train", "val",
                 "test")[image % 10]
        x, y = rng.uniform(0, 300), rng.uniform(0, 200)
        out.append(Record(image_id=str(image), image_path=f"images/{image}.jpg", width=480,
                          height=360, box=(x, y, x + rng.uniform(8, 170), y + rng.uniform(8, 150)),
                          phrase=phrase, tokens=tuple(tokenize(phrase)), split=split,
                          ref_id=f"{image}_{i % 4}", sent_id=0))
    return out


def timed(fn) -> tuple[object, float]:
    """(fn(), seconds)."""
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    """Measure, print, and record the section."""
    args = parse()
    busy = require_quiet(args)
    m = machine(matmul_gflops())
    print(machine_line(m), file=sys.stderr)
    args.root.mkdir(parents=True, exist_ok=True)
    parts = []
    if args.referit is None or not Path(args.referit).is_dir():
        print("ReferIt annotations not given (--referit or $VGKIT_REFERIT_ANNOTATIONS): "
              "its rows are skipped", file=sys.stderr)
    else:
        root = Path(args.referit)
        runs = [prepare_cli(root, args.root / "referit-index") for _ in range(args.rounds)]
        secs, peak = min(r[0] for r in runs), max(r[1] for r in runs)
        index, per = bytes_per_record(lambda: load_referit(root, "auto", DEFAULT_SPLITS,
                                                           strict=False))
        n = len(index)  # type: ignore[arg-type]
        del index
        parts.append(md_table(["what", "expressions", "best wall s", "peak RSS MB",
                               "bytes per expression (index in memory)"],
                              [["`vgkit data prepare referit` (hu form; fresh process: read, "
                                "validate, look for images, write)", f"{n:,}",
                                f"{secs:.2f}", f"{peak:.0f}", f"{per:.0f}"]]))
        print(f"  referit: {secs:.2f} s, {peak:.0f} MB, {per:.0f} B/record", file=sys.stderr)
    records, per = bytes_per_record(functools.partial(synthetic_records, args.records))
    assert isinstance(records, list)
    rows = [["the input: a list of Record objects", f"{per:.0f} B a record", ""]]
    build = functools.partial(DatasetIndex, records, name="synthetic-1m")
    build_s = timed(build)[1]
    index, per = bytes_per_record(build)
    assert isinstance(index, DatasetIndex)
    rows.append(["build the index from them (columns)", f"{build_s:.2f} s",
                 f"{per:.0f} B a record in the index (its distinct strings, shared with "
                 "the input, not counted: see load)"])
    out = args.root / "index-1m"
    save_s = min(timed(functools.partial(index.save, out))[1] for _ in range(args.rounds))
    size = sum(f.stat().st_size for f in out.iterdir())
    rows.append(["save (records.jsonl + manifest)", f"{save_s:.2f} s", f"{size / 2**20:.0f} MB on disk"])
    del records, index, build
    gc.collect()
    load = functools.partial(DatasetIndex.load, out)
    load_s = min(timed(load)[1] for _ in range(args.rounds))
    loaded, per = bytes_per_record(load)
    assert isinstance(loaded, DatasetIndex)
    rows.append(["load (parse + check every line, into columns)", f"{load_s:.2f} s",
                 f"{len(loaded):,} records, {per:.0f} B a record in memory"])
    q = {"splits() (counts)": loaded.splits,
         "split('val')": functools.partial(loaded.split, "val"),
         "digest()": loaded.digest,
         "column('box') (a float64 array)": functools.partial(loaded.column, "box"),
         "iterate (every Record built)": functools.partial(sum, (1 for _ in loaded))}
    for what, fn in q.items():
        result, s = timed(fn)
        shown = (result if isinstance(result, dict) else result[:16] + "..."
                 if isinstance(result, str) else f"{result:,} records" if isinstance(result, int)
                 else f"{len(result):,} rows")  # type: ignore[arg-type]
        rows.append([f"query: {what}", f"{s:.2f} s", str(shown)])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append(["this process's peak RSS (all of the above)", f"{peak:.0f} MB", ""])
    parts.append(f"**An index of {args.records:,} synthetic records** (4 phrases an image, 3-8 "
                 "words, 80/10/10 splits by image; best of "
                 f"{args.rounds} for save and load):\n\n"
                 + md_table(["operation", "time or size", "note"], rows))
    body = "\n\n".join([
        "The index holds its records as columns: numpy arrays for sizes, sent ids and boxes, "
        "int32 codes into tables of distinct strings for image ids, paths, splits and ref ids, "
        "the phrases in one UTF-8 buffer and the tokens as ids into one table, each with "
        "offsets; a Record is built when one is read. The index file is JSON lines written "
        "from the columns a chunk at a time and hashed as it goes; `load` parses each line "
        "straight into the columns. `vgkit data prepare` mounts only the `data` commands, so "
        "it does not import torch. Bytes per expression: tracemalloc's count of what the "
        "index holds, after a garbage collection.", *parts])
    publish(NAME, "Dataset index (`bench_index.py`)", m, body, busy, args)


if __name__ == "__main__":
    main()
