"""A tiny random-init BERT saved as a local Hugging Face directory, for tests of ``hf``.

Made from a config and a word-level vocabulary written here: nothing is downloaded.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

WORDS = ("the", "a", "of", "left", "right", "above", "below", "big", "small", "red", "green",
         "blue", "circle", "square", "triangle", "man", "sky", "tree", "on", "in", "at",
         "topmost", "leftmost")


def save_tiny_bert(out: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Write config, weights and tokenizer of a tiny random BERT to `out`; return `out`."""
    from transformers import BertConfig, BertModel, BertTokenizer
    from transformers.utils import logging as hf_logging

    out.mkdir(parents=True, exist_ok=True)
    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(vocab))  # positional: v4 calls it vocab_file, v5 vocab.save_pretrained(str(out))
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=64)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" in every test log otherwise
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            BertModel(config).save_pretrained(str(out))
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return out


@functools.cache
def tiny_bert_dir() -> Path:
    """One tiny BERT directory per test process (removed when the process exits)."""
    tmp = tempfile.TemporaryDirectory(prefix="vgkit-tiny-bert-")
    _keep.append(tmp)  # the directory lives as long as this object
    return save_tiny_bert(Path(tmp.name) / "tiny-bert")


_keep: list[tempfile.TemporaryDirectory[str]] = []
