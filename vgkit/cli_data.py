"""``vgkit data``: build a dataset index from raw annotations and summarise one.

Errors are :class:`VgkitError`; the top-level CLI prints them as one line.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from vgkit.cli_common import LiteralConsole, styled, user_errors
from vgkit.data.index import DatasetIndex, Record
from vgkit.data.refcoco import DATASETS, load_refcoco
from vgkit.data.referit import DEFAULT_SPLITS, load_referit
from vgkit.data.validate import IndexCheck, check_index, image_file
from vgkit.errors import UnknownNameError, VgkitError
from vgkit.text import Vocabulary

app = typer.Typer(help="Prepare dataset indexes from raw annotations and inspect them.",
                  no_args_is_help=True)



def _referit(root: Path, fmt: str, splits: list[str] | None, strict: bool, split_by: str | None,
             image_dir: str | None) -> DatasetIndex:
    if split_by not in (None, "berkeley") or image_dir is not None:
        raise VgkitError("referit is Hu et al.'s berkeley split with its own image folders: "
                         "--split-by and --image-dir do not apply (refclef has the unc split)")
    return load_referit(root, fmt, splits or DEFAULT_SPLITS, strict=strict)


def _refcoco(name: str) -> Callable[..., DatasetIndex]:
    return lambda root, fmt, splits, strict, split_by, image_dir: load_refcoco(
        root, name, fmt, split_by, splits, strict=strict, image_dir=image_dir)


# dataset name -> loader(root, format, splits or None, strict, split_by, image_dir)
LOADERS: dict[str, Callable[..., DatasetIndex]] = {
    "referit": _referit,
    **{name: _refcoco(name) for name in DATASETS},
}
DEFAULT_OUT = "vgkit-index"
_SHOW = 5  # how many example paths to print
_LENGTH_BINS = ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 10), (11, 20), (21, None))
_QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def _console() -> Console:
    # Built per command so output goes to the stdout current at call time (CliRunner swaps it).
    return LiteralConsole(soft_wrap=True)


def missing_images(index: DatasetIndex, root: Path) -> tuple[int, int, list[str]]:
    """(missing, distinct images, first few missing paths) of `index` under `root`."""
    paths = sorted({r.image_path for r in index})
    missing = [p for p in paths if not image_file(root, p).is_file()]
    return len(missing), len(paths), missing[:_SHOW]


@app.command()
@user_errors
def prepare(
    dataset: str = typer.Argument(..., help=f"Dataset name: {', '.join(LOADERS)}."),
    root: Path = typer.Option(..., "--root", help="Directory holding the raw annotations."),
    format: str = typer.Option("auto", "--format",
                               help="Annotation form: auto; referit: hu, refer, pth; "
                               "refcoco, refcoco+, refcocog, refclef: refer, pth; flickr30k: pth."),
    out: Path | None = typer.Option(None, "--out",
                                    help=f"Index directory [default: ROOT/{DEFAULT_OUT}]."),
    splits: str | None = typer.Option(None, "--splits", help="Comma-separated splits to index "
                                      f"[default: referit {','.join(DEFAULT_SPLITS)}; others: "
                                      "every split of the form, plus trainval]."),
    split_by: str | None = typer.Option(None, "--split-by", help="Which published split: "
                                        "refcoco unc|google, refcoco+ unc, refcocog umd|google, "
                                        "refclef unc|berkeley [default: the first]."),
    image_dir: str | None = typer.Option(None, "--image-dir", help="Images folder under ROOT "
                                         "[default: the layout's, see docs/data.md]."),
    strict: bool = typer.Option(False, "--strict", help="Fail on any bad box, empty or "
                                "undecodable phrase, duplicate or other invalid record."),
) -> None:
    """Read a dataset's annotations and write a vgkit index (manifest.json + records.jsonl)."""
    if dataset not in LOADERS:
        raise UnknownNameError("dataset", dataset, LOADERS)
    if not root.is_dir():
        raise VgkitError(f"--root {root} is not a directory")
    out_dir = out if out is not None else root / DEFAULT_OUT
    if out is None and not root.stat().st_mode & 0o222:
        # Checked by mode bits, not os.access: as root, os.access would say yes and the
        # index would land inside a dataset directory marked read-only.
        raise VgkitError(f"{root} is read-only; choose where to write the index with --out")
    wanted = None if splits is None else [x.strip() for x in splits.split(",") if x.strip()]
    if wanted == []:
        raise VgkitError("--splits names no split")
    index = LOADERS[dataset](root, format, wanted, strict, split_by, image_dir)
    if not len(index):
        raise VgkitError(f"{root}: no {dataset} expressions found")
    check = check_index(index, strict=strict)
    index.meta["validation"] = check.as_meta()
    n_missing, n_images, examples = missing_images(index, root)
    index.meta["missing_images"] = {"count": n_missing, "images": n_images, "examples": examples}
    try:
        index.save(out_dir)
    except OSError as e:
        raise VgkitError(f"cannot write the index to {out_dir} ({e.strerror or e}); "
                         f"choose another place with --out") from None

    con = _console()
    split_by = index.meta.get("split_by")
    table = Table(title=f"{dataset}{f' ({split_by})' if split_by else ''} "
                        f"({index.source} form) -> {out_dir}")
    table.add_column("split")
    table.add_column("expressions", justify="right")
    table.add_column("images", justify="right")
    published = index.meta.get("published") or {}
    if published:
        table.add_column("published", justify="right")
    images: dict[str, set[str]] = {}
    for r in index:
        images.setdefault(r.split, set()).add(r.image_id)
    for split, n in index.splits().items():
        row = [split, f"{n:,}", f"{len(images[split]):,}"]
        table.add_row(*row, *([f"{published[split]:,}" if split in published else ""]
                              if published else []))
    con.print(table)
    if n_missing:
        what = "none of the" if n_missing == n_images else f"{n_missing:,} of"
        con.print(styled("missing images:", "yellow", f" {what} {n_images:,} images exist under {root}; "
                  f"first: {', '.join(examples)}"))
    else:
        con.print(f"images: all {n_images:,} found under {root}")
    _print_problems(con, index.meta, check)


def _print_problems(con: Console, meta: dict[str, Any], check: IndexCheck) -> None:
    # Two sources: what the loader met reading the annotations (skipped or clipped there),
    # and the invalid records check_index finds in the index (skipped by train and eval).
    counts = meta.get("problems", {}).get("counts", {})
    if counts:
        con.print(styled("problems", "yellow", " (per expression, when the annotations were read): "
                          + ", ".join(f"{k} {v:,}" for k, v in counts.items())))
        for kind, examples in meta["problems"].get("examples", {}).items():
            for ex in examples[:2]:
                con.print(f"  {kind}: {ex}")
    if not check.ok:
        con.print(styled("invalid records", "yellow", f" (train and eval skip them): {check.summary()}"))
        for kind, examples in check.examples.items():
            for ex in examples[:2]:
                con.print(f"  {kind}: {ex}")
    if not counts and check.ok:
        con.print("problems: none")
    for note in meta.get("notes", []):
        con.print(f"note: {note}")


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of an already sorted, non-empty sequence."""
    return sorted_values[round(q * (len(sorted_values) - 1))]


def expressions(index: DatasetIndex, split: str | None) -> list[Record]:
    """The records to summarise: one split, or every expression once (trainval repeats train/val)."""
    if split is not None:
        return index.split(split).records
    seen: dict[tuple[Any, ...], Record] = {}
    for r in index:
        seen.setdefault((r.image_id, r.ref_id, r.sent_id, r.phrase, r.box), r)
    return list(seen.values())


def length_histogram(lengths: Sequence[int]) -> list[tuple[str, int]]:
    """Counts of token lengths in fixed bins (1, 2, ..., 6-10, 11-20, 21+)."""
    rows = []
    for lo, hi in _LENGTH_BINS:
        label = str(lo) if lo == hi else (f"{lo}-{hi}" if hi else f"{lo}+")
        rows.append((label, sum(1 for n in lengths if n >= lo and (hi is None or n <= hi))))
    return rows


def vocab_coverage(records: Sequence[Record], vocab: Vocabulary) -> dict[str, Any]:
    """Share of tokens (and of distinct tokens) found in `vocab`, plus the commonest unknowns."""
    counts = Counter(t for r in records for t in r.tokens)
    total = sum(counts.values())
    known = sum(n for t, n in counts.items() if t in vocab)
    unknown = Counter({t: n for t, n in counts.items() if t not in vocab})
    return {"tokens": total, "token_share": known / total if total else 0.0,
            "types": len(counts), "type_share": (len(counts) - len(unknown)) / len(counts)
            if counts else 0.0, "top_unknown": unknown.most_common(_SHOW)}


@app.command()
@user_errors
def info(
    index_dir: Path = typer.Argument(..., help="An index directory written by `prepare`."),
    vocab: Path | None = typer.Option(None, "--vocab", help="Vocabulary file (one token a line)."),
    split: str | None = typer.Option(None, "--split", help="Summarise one split only."),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first invalid record."),
) -> None:
    """Summarise an index: counts per split, phrase lengths, box sizes, vocabulary coverage."""
    index = DatasetIndex.load(index_dir)
    check = check_index(index, strict=strict)
    voc = Vocabulary.from_file(vocab) if vocab is not None else None
    # Statistics over the records train and eval use: a NaN box would poison the quantiles.
    records = expressions(check.valid(index), split)
    con = _console()
    # The manifest's digest: recomputing it over every record costs seconds.
    digest = json.loads((index_dir / "manifest.json").read_text()).get("digest", "?")
    con.print(styled(index.name, "bold", f" ({index.source or '?'} form): {len(index):,} records, "
              f"digest {digest[:12]}"))
    t = Table(title="splits")
    t.add_column("split")
    t.add_column("expressions", justify="right")
    for name, n in index.splits().items():
        t.add_row(name, f"{n:,}")
    con.print(t)
    _print_problems(con, index.meta, check)
    scope = (f"split {split}" if split else "all expressions, each once") + (
        "" if check.ok else ", valid records only")
    if not records:
        con.print(f"no expressions in {scope}")
        return

    lengths = sorted(len(r.tokens) for r in records)
    con.print(f"phrase length in tokens ({scope}): mean {statistics.fmean(lengths):.2f}, "
              f"median {statistics.median(lengths):g}, max {lengths[-1]}")
    h = Table(title="phrase length histogram")
    h.add_column("tokens")
    h.add_column("expressions", justify="right")
    h.add_column("")
    hist = length_histogram(lengths)
    top = max(n for _, n in hist) or 1
    for label, n in hist:
        h.add_row(label, f"{n:,}", "█" * round(30 * n / top))
    con.print(h)

    areas = sorted((r.box[2] - r.box[0]) * (r.box[3] - r.box[1]) / (r.width * r.height)
                   for r in records if r.width > 0 and r.height > 0)
    if areas:
        b = Table(title="box area / image area")
        for q in _QUANTILES:
            b.add_column({0.0: "min", 1.0: "max"}.get(q, f"q{round(q * 100)}"), justify="right")
        b.add_row(*(f"{_quantile(areas, q):.4f}" for q in _QUANTILES))
        con.print(b)
    if len(areas) < len(records):
        con.print(f"box sizes: {len(records) - len(areas):,} expressions have no image size")

    if voc is not None:
        cov = vocab_coverage(records, voc)
        con.print(f"vocabulary {vocab} ({len(voc):,} tokens): covers {cov['token_share']:.2%} "
                  f"of {cov['tokens']:,} tokens, {cov['type_share']:.2%} of {cov['types']:,} "
                  f"distinct tokens")
        if cov["top_unknown"]:
            con.print("commonest unknown: "
                      + ", ".join(f"{t!r} {n}" for t, n in cov["top_unknown"]))


@app.command()
@user_errors
def synth(
    out: Path = typer.Option(Path("data/synthetic"), "--out", help="Dataset directory to write."),
    n_images: int = typer.Option(2000, "--n-images", min=10, help="Number of scenes."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    width: int = typer.Option(320, "--width", min=64),
    height: int = typer.Option(240, "--height", min=64),
    preview: Path | None = typer.Option(None, "--preview", help="Also write a PNG grid of examples."),
) -> None:
    """Generate the synthetic referring-expression dataset (JPEGs + index), like a real one.

    A dataset already at --out with the same parameters is kept as it is (same bytes).
    """
    from vgkit.data.synth import ensure_synthetic
    from vgkit.data.synth import preview as draw_preview

    index = ensure_synthetic(out, n_images=n_images, seed=seed, image_size=(width, height))
    con = _console()
    types = Counter(r.extra.get("type", "?") for r in index)
    con.print(f"wrote {len(index):,} expressions over {n_images:,} images to {out} "
              f"(splits {index.splits()}; types {dict(types)})")
    if preview is not None:
        draw_preview(index, out, preview)
        con.print(f"preview: {preview}")
