"""``vgkit data``: build a dataset index from raw annotations and summarise one.

Errors are :class:`VgkitError`; the top-level CLI prints them as one line.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from vgkit.cli.common import LiteralConsole, styled, user_errors
from vgkit.data.convert import TARGETS, convert_source
from vgkit.data.index import DatasetIndex
from vgkit.data.prepare import DEFAULT_OUT, LOADERS, prepare_index
from vgkit.data.referit import DEFAULT_SPLITS
from vgkit.data.stats import expressions, record_statistics
from vgkit.data.validate import IndexCheck, check_index
from vgkit.text import Vocabulary

app = typer.Typer(help="Prepare dataset indexes from raw annotations and inspect them.",
                  no_args_is_help=True)


def _console() -> Console:
    # Built per command so output goes to the stdout current at call time (CliRunner swaps it).
    return LiteralConsole(soft_wrap=True)


@app.command()
@user_errors
def prepare(
    dataset: str = typer.Argument(..., help=f"Dataset name: {', '.join(LOADERS)}."),
    root: Path = typer.Option(..., "--root", help="Directory holding the raw annotations."),
    format: str = typer.Option("auto", "--format",
                               help="Annotation form: auto; referit: hu, refer, pth; "
                               "refcoco, refcoco+, refcocog, refclef: refer, pth, simrec, seqtr, "
                               "mdetr, json (the first json form found); flickr30k: pth, "
                               "seqtr, json."),
    out: Path | None = typer.Option(None, "--out",
                                    help=f"Index directory \\[default: ROOT/{DEFAULT_OUT}]."),
    splits: str | None = typer.Option(None, "--splits", help="Comma-separated splits to index "
                                      f"\\[default: referit {','.join(DEFAULT_SPLITS)}; others: "
                                      "every split of the form, plus trainval]."),
    split_by: str | None = typer.Option(None, "--split-by", help="Which published split: "
                                        "refcoco unc|google, refcoco+ unc, refcocog umd|google, "
                                        "refclef unc|berkeley \\[default: the first]."),
    image_dir: str | None = typer.Option(None, "--image-dir", help="Images folder under ROOT "
                                         "\\[default: the layout's, see docs/data.md]."),
    strict: bool = typer.Option(False, "--strict", help="Fail on any bad box, empty or "
                                "undecodable phrase, duplicate or other invalid record."),
) -> None:
    """Read a dataset's annotations and write a vgkit index (manifest.json + records.jsonl)."""
    wanted = None if splits is None else [x.strip() for x in splits.split(",") if x.strip()]
    done = prepare_index(dataset, root, format=format, splits=wanted, split_by=split_by,
                         image_dir=image_dir, strict=strict, out=out)
    index, con = done.index, _console()
    split_by = index.meta.get("split_by")
    table = Table(title=f"{dataset}{f' ({split_by})' if split_by else ''} "
                        f"({index.source} form) -> {done.out}")
    table.add_column("split")
    table.add_column("expressions", justify="right")
    table.add_column("images", justify="right")
    published = index.meta.get("published") or {}
    if published:
        table.add_column("published", justify="right")
    images = done.images_per_split()
    for split, n in index.splits().items():
        row = [split, f"{n:,}", f"{images[split]:,}"]
        table.add_row(*row, *([f"{published[split]:,}" if split in published else ""]
                              if published else []))
    con.print(table)
    miss = done.missing
    if miss.count:
        what = "none of the" if miss.count == miss.images else f"{miss.count:,} of"
        con.print(styled("missing images:", "yellow", f" {what} {miss.images:,} images exist "
                         f"under {root}; first: {', '.join(miss.examples)}"))
    else:
        con.print(f"images: all {miss.images:,} found under {root}")
    _print_problems(con, index.meta, done.check)


@app.command()
@user_errors
def convert(
    source: Path = typer.Argument(..., help="An index directory (from `prepare`), or with "
                                  "--dataset the root of a dataset's raw annotations."),
    to: str = typer.Option(..., "--to", help=f"Form to write: {', '.join(TARGETS)}."),
    out: Path = typer.Option(..., "--out", help="Folder to write into (pth: its "
                             "<name>/<name>_<split>.pth, as TransVG's data/)."),
    dataset: str | None = typer.Option(None, "--dataset", help="Read SOURCE as this "
                                       f"dataset's raw annotations: {', '.join(LOADERS)}."),
    format: str = typer.Option("auto", "--format", help="With --dataset: the form to read "
                               "(as for `prepare`)."),
    split_by: str | None = typer.Option(None, "--split-by", help="Which published split to "
                                        "read (with --dataset); refer: the refs(<split_by>).p "
                                        "name \\[default: the index's]."),
    splits: str | None = typer.Option(None, "--splits", help="Comma-separated splits to "
                                      "write \\[default: all; trainval only where train and val "
                                      "are not both there]."),
    image_dir: str | None = typer.Option(None, "--image-dir", help="The images folder under "
                                         "the root; files are named relative to it \\[default: "
                                         "the index's, else the folder its images share]."),
    name: str | None = typer.Option(None, "--name", help="Dataset name in the files \\[default: "
                                    "pth: unc, unc+, gref, gref_umd, flickr by set; else the "
                                    "index's]. pth: flickr and referit choose their layouts."),
    force: bool = typer.Option(False, "--force", help="Overwrite files that exist."),
) -> None:
    """Write an index in another form: one-stage pth, refer pickles or COCO-style json."""
    wanted = None if splits is None else [x.strip() for x in splits.split(",") if x.strip()]
    done = convert_source(source, to, out, dataset=dataset, format=format, split_by=split_by,
                          splits=wanted, image_dir=image_dir, name=name, force=force)
    con = _console()
    con.print(f"wrote {len(done.files)} files ({to} form) to {out}: "
              + ", ".join(f"{split} {n:,}" for split, n in done.counts.items())
              + " expressions")
    for f in done.files:
        con.print(f"  {f}")
    for note in done.notes:
        con.print(f"note: {note}")


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

    st = record_statistics(records, voc)
    ln = st["length"]
    con.print(f"phrase length in tokens ({scope}): mean {ln['mean']:.2f}, "
              f"median {ln['median']:g}, max {ln['max']}")
    h = Table(title="phrase length histogram")
    h.add_column("tokens")
    h.add_column("expressions", justify="right")
    h.add_column("")
    top = max(n for _, n in ln["histogram"]) or 1
    for label, n in ln["histogram"]:
        h.add_row(label, f"{n:,}", "█" * round(30 * n / top))
    con.print(h)
    if st["area_quantiles"]:
        b = Table(title="box area / image area")
        for q in st["area_quantiles"]:
            b.add_column({0.0: "min", 1.0: "max"}.get(q, f"q{round(q * 100)}"), justify="right")
        b.add_row(*(f"{v:.4f}" for v in st["area_quantiles"].values()))
        con.print(b)
    if st["no_size"]:
        con.print(f"box sizes: {st['no_size']:,} expressions have no image size")
    if voc is not None:
        cov = st["coverage"]
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
