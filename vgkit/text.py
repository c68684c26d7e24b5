"""Tokenizer and vocabulary shared by datasets and vocabulary-based text encoders.

The tokenizer is that of ReferIt's hu-form tools (text_objseg / SCRC), the one its
8,803-token vocabulary was built with: split on runs of non-word
characters (``re.split(r"(\\W+)")``), drop whitespace-only pieces, lowercase,
drop a final ``"."``. Punctuation other than whitespace stays a token.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from vgkit.errors import VgkitError
from vgkit.fsutil import atomic_write_text

PAD, GO, EOS, UNK = "<pad>", "<go>", "<eos>", "<unk>"
SPECIALS = (PAD, GO, EOS, UNK)
_SPLIT = re.compile(r"(\W+)")


def tokenize(phrase: str) -> list[str]:
    """Split a phrase into lowercase tokens the way ReferIt's hu-form tools do."""
    words = [w.lower() for w in _SPLIT.split(phrase.strip()) if w.strip()]
    if words and words[-1] == ".":
        words = words[:-1]
    # interned: an index holds each distinct token once, not once per phrase that uses it
    return [sys.intern(w.strip()) for w in words]


class Vocabulary:
    """Token <-> id mapping; id 0 is ``<pad>`` and unknown tokens map to ``<unk>``."""

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if tokens[: len(SPECIALS)] != list(SPECIALS):
            tokens = list(SPECIALS) + [t for t in tokens if t not in SPECIALS]
        if len(set(tokens)) != len(tokens):
            dup = next(t for t, n in Counter(tokens).items() if n > 1)
            raise VgkitError(f"vocabulary has duplicate token {dup!r}")
        self.itos = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}
        self.pad_id, self.unk_id = self.stoi[PAD], self.stoi[UNK]

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Token ids, ``<unk>`` for unknown tokens."""
        return [self.stoi.get(t, self.unk_id) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of `ids`."""
        return [self.itos[i] for i in ids]

    def digest(self) -> str:
        """A short sha256 of the token list: identifies this vocabulary."""
        return hashlib.sha256("\n".join(self.itos).encode()).hexdigest()[:16]

    @classmethod
    def build(cls, phrases: Iterable[Sequence[str]], min_count: int = 1) -> Vocabulary:
        """A vocabulary of the tokens seen at least `min_count` times, most frequent first."""
        counts = Counter(t for toks in phrases for t in toks)
        kept = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
        return cls(list(SPECIALS) + kept)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Read one token a line (the hu form's ``vocabulary_referit.txt`` format)."""
        p = Path(path)
        if not p.is_file():
            raise VgkitError(f"vocabulary file not found: {p}")
        return cls([line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines() if line.strip()])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write one token a line."""
        atomic_write_text(path, "\n".join(self.itos) + "\n")
