"""The paper's text model (§3.2): word embeddings W_e, a BLSTM, v_l and v_T."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vgkit.errors import VgkitError
from vgkit.interfaces import TextEncoder, TextInputs
from vgkit.layers import Linear
from vgkit.text import SPECIALS, Vocabulary, tokenize


class BLSTMOptions(BaseModel):
    """Options of the ``blstm`` text encoder."""

    model_config = ConfigDict(extra="forbid")
    embedding_dim: int = Field(300, gt=0)  # Table 1: word embedding dimensions
    hidden: int = Field(300, gt=0)  # size of v_l; not given in the paper (see docs)
    layers: int = Field(1, ge=1, le=3)  # Table 1: LSTM layers 1, range [1, 3]
    dropout: float = Field(0.0, ge=0, lt=1)  # between stacked LSTM layers only
    max_words: int = Field(20, gt=0)  # longer phrases are truncated (Hu et al. use 20)
    vocab_size: int = Field(8803, gt=len(SPECIALS))  # only when no vocabulary is given
    freeze_embeddings: bool = False  # the paper updates every parameter but VGG16's


class BLSTMEncoder(TextEncoder):
    """u_l = W_e q_l; v_l = tanh(W_fwd v→_l + W_bwd v←_l + b_bi); v_T = mean_l v_l (real words)."""

    def __init__(self, opts: BLSTMOptions, vocab: Vocabulary | None,
                 embeddings: Tensor | None) -> None:
        super().__init__()
        self.vocab = vocab or Vocabulary(list(SPECIALS) + [f"w{i}" for i in range(
            opts.vocab_size - len(SPECIALS))])
        self.max_words, self.dim = opts.max_words, opts.hidden
        self.W_e = nn.Embedding(len(self.vocab), opts.embedding_dim, padding_idx=self.vocab.pad_id)
        if embeddings is not None:
            if tuple(embeddings.shape) != (len(self.vocab), opts.embedding_dim):
                raise VgkitError(f"text encoder blstm: embeddings are {tuple(embeddings.shape)}, "
                                 f"expected ({len(self.vocab)}, {opts.embedding_dim}) "
                                 "(vocabulary size, embedding_dim)")
            with torch.no_grad():
                self.W_e.weight.copy_(embeddings)
        self.W_e.weight.requires_grad_(not opts.freeze_embeddings)
        self.lstm = nn.LSTM(opts.embedding_dim, opts.hidden, num_layers=opts.layers,
                            bidirectional=True, batch_first=True,
                            dropout=opts.dropout if opts.layers > 1 else 0.0)
        self.W_fwd = Linear(opts.hidden, opts.hidden, bias=False)
        self.W_bwd = Linear(opts.hidden, opts.hidden)  # its bias is b_bi

    def tokenize(self, phrases: list[str]) -> TextInputs:
        """Hu et al.'s tokenizer, vocabulary ids, padded with <pad>; an empty phrase is <unk>."""
        rows = [self.vocab.encode(tokenize(p)[: self.max_words]) or [self.vocab.unk_id]
                for p in phrases]
        L = max(len(r) for r in rows)
        ids = torch.full((len(rows), L), self.vocab.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return TextInputs(ids, ids != self.vocab.pad_id)

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """ids, mask [B, L] -> v_l [B, L, hidden] (zero on padding), v_T [B, hidden]."""
        u = self.W_e(ids)  # [B, L, E]
        lengths = mask.sum(1).clamp(min=1).cpu()
        # packing keeps the backward LSTM from reading the padding first
        packed = pack_padded_sequence(u, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        v_fwd, v_bwd = out.chunk(2, dim=-1)  # [B, L, hidden] each
        m = mask.unsqueeze(-1).to(u.dtype)
        v_l = torch.tanh(self.W_fwd(v_fwd) + self.W_bwd(v_bwd)) * m
        v_T = v_l.sum(1) / m.sum(1).clamp(min=1)
        return v_l, v_T


def build_blstm(opts: BLSTMOptions, *, vocab: Vocabulary | None = None,
                embeddings: Tensor | None = None) -> BLSTMEncoder:
    """The paper's BLSTM text model (§3.2)."""
    return BLSTMEncoder(opts, vocab, embeddings)
