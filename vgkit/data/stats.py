"""What ``vgkit data info`` says about an index: phrase lengths, box sizes, vocabulary coverage."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from vgkit.data.index import DatasetIndex, Record
from vgkit.text import Vocabulary

LENGTH_BINS = ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 10), (11, 20), (21, None))
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
TOP_UNKNOWN = 5


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of an already sorted, non-empty sequence."""
    return sorted_values[round(q * (len(sorted_values) - 1))]


def expressions(index: DatasetIndex, split: str | None) -> list[Record]:
    """The records to summarise: one split, or every expression once (trainval repeats train/val)."""
    if split is not None:
        return list(index.split(split).records)
    seen: dict[tuple[Any, ...], Record] = {}
    for r in index:
        seen.setdefault((r.image_id, r.ref_id, r.sent_id, r.phrase, r.box), r)
    return list(seen.values())


def length_histogram(lengths: Sequence[int]) -> list[tuple[str, int]]:
    """Counts of token lengths in fixed bins (1, 2, ..., 6-10, 11-20, 21+)."""
    rows = []
    for lo, hi in LENGTH_BINS:
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
            if counts else 0.0, "top_unknown": unknown.most_common(TOP_UNKNOWN)}


def record_statistics(records: Sequence[Record], vocab: Vocabulary | None = None) -> dict[str, Any]:
    """Phrase lengths (mean, median, max, histogram), box area / image area quantiles
    (``{q: value}``; records without an image size counted in ``no_size``) and, given a
    vocabulary, its coverage. `records` must not be empty."""
    lengths = sorted(len(r.tokens) for r in records)
    areas = sorted((r.box[2] - r.box[0]) * (r.box[3] - r.box[1]) / (r.width * r.height)
                   for r in records if r.width > 0 and r.height > 0)
    out: dict[str, Any] = {
        "length": {"mean": statistics.fmean(lengths), "median": statistics.median(lengths),
                   "max": lengths[-1], "histogram": length_histogram(lengths)},
        "area_quantiles": {q: quantile(areas, q) for q in QUANTILES} if areas else {},
        "no_size": len(records) - len(areas)}
    if vocab is not None:
        out["coverage"] = vocab_coverage(records, vocab)
    return out
