"""ONNX export of a trained run, checked against PyTorch, and grounding with the exported file.

``export_onnx(grounder, "model.onnx")`` writes three files:

- ``model.onnx``: the whole model, ``images`` [B, 3, H, W] (preprocessed) + ``ids`` [B, L]
  int64 + ``mask`` [B, L] bool -> ``boxes`` [B, 4] xyxy in input pixels, and the attention
  maps the model has (``alpha_I`` [B, h*w], ``alpha_T`` [B, L]); batch and phrase length free
  (with a Hugging Face tokenizer L is its max_tokens: every phrase is padded to it);
- ``model.heads.onnx``: the same from ``features`` [B, C, h, w] (the backbone's maps, as the
  feature cache holds them) instead of images;
- ``model.json``: the vocabulary and tokenizer rule, the preprocessing (size, resize mode,
  mean/std) and how input-pixel boxes map back to the original image;
- ``model.tokenizer.json``, for a text encoder with a Hugging Face tokenizer (``hf``,
  ``minilm``) instead of a vocabulary: that tokenizer, which the ``tokenizers`` package reads.

Then it grounds dataset images with PyTorch (``Grounder.predict``) and with onnxruntime,
and reports the largest box difference in original pixels. :class:`OnnxGrounder` reads the
three files and predicts like a Grounder, with onnxruntime and no checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from vgkit.api import Grounder, ImageLike, Prediction, check_phrase, open_image
from vgkit.data.images import ImageTransform
from vgkit.engine.visualize import render_figure, words_for
from vgkit.errors import VgkitError
from vgkit.fsutil import atomic_write_text
from vgkit.interfaces import TextInputs
from vgkit.text import Vocabulary, tokenize

FORMAT = "vgkit-onnx"
PARITY_PX = 0.01  # the largest box difference (original pixels, fp32) the check accepts
OPSET = 17


class _Whole(nn.Module):
    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, images: Tensor, ids: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
        return _outputs(self.model(TextInputs(ids, mask), images=images), self.names)


class _Heads(_Whole):
    def forward(self, features: Tensor, ids: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
        return _outputs(self.model(TextInputs(ids, mask), features=features), self.names)


def _outputs(out: Any, names: list[str]) -> tuple[Tensor, ...]:
    maps = {"alpha_I": out.state.alpha_I, "alpha_T": out.state.alpha_T}
    return (out.boxes, *(maps[n] for n in names[1:]))


def paths(out: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """(model, heads, json) for the model file `out`: x.onnx, x.heads.onnx, x.json."""
    model = Path(out)
    if model.suffix != ".onnx":
        raise VgkitError(f"--out {model}: name the model file *.onnx")
    return model, model.with_suffix(".heads.onnx"), model.with_suffix(".json")


def tokenizer_path(out: str | os.PathLike[str]) -> Path:
    """x.tokenizer.json beside the model file x.onnx (a Hugging Face tokenizer's rule)."""
    return paths(out)[0].with_suffix(".tokenizer.json")


def hf_tokenizer(text: dict[str, Any], source: str) -> Any:
    """The `tokenizers` Tokenizer of `source` (its JSON), truncating and padding as `text` says."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(source)
    tok.no_truncation()
    tok.no_padding()
    tok.enable_truncation(max_length=int(text["max_tokens"]),
                          direction=str(text["truncation_side"]))
    # padded to max_tokens, always: the file's phrase length is fixed (see _text_rule)
    tok.enable_padding(direction=str(text["padding_side"]), pad_id=int(text["pad_id"]),
                       pad_token=str(text["pad_token"]), length=int(text["max_tokens"]))
    return tok


def text_ids(meta: dict[str, Any], phrases: list[str],
             tokenizer: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids [B, L] int64, mask [B, L] bool) by the exported rule of `meta`.

    A Hugging Face rule needs its `tokenizer` (:func:`hf_tokenizer`): special tokens added and
    truncated to max_tokens, as the encoder's own call does, then padded to max_tokens.
    """
    if meta["text"].get("kind") == "huggingface":
        encs = tokenizer.encode_batch(list(phrases))
        return (np.array([e.ids for e in encs], dtype=np.int64),
                np.array([e.attention_mask for e in encs], dtype=bool))
    return vocabulary_ids(meta, phrases)


def vocabulary_ids(meta: dict[str, Any], phrases: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids [B, L] int64, mask [B, L] bool) by the exported vocabulary rule of `meta`."""
    text = meta["text"]
    vocab = Vocabulary(text["vocab"])
    rows = [vocab.encode(tokenize(p)[: text["max_words"]]) or [vocab.unk_id] for p in phrases]
    ids = np.full((len(rows), max(len(r) for r in rows)), vocab.pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids, ids != vocab.pad_id


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how closely onnxruntime matches PyTorch."""

    model: Path
    heads: Path
    meta: Path
    samples: int  # (image, phrase) pairs checked
    box_px: float  # the whole model: largest |box difference| in original pixels
    heads_box_px: float  # the heads from PyTorch's maps: the same
    attention: float | None  # largest |alpha_I difference|, None without image attention
    word_attention: float | None  # largest |alpha_T difference|
    tokenizer: Path | None = None  # x.tokenizer.json, for a Hugging Face tokenizer

    @property
    def passed(self) -> bool:
        """Both box differences within PARITY_PX."""
        return max(self.box_px, self.heads_box_px) <= PARITY_PX


def _text_rule(grounder: Grounder, tokenizer_file: Path) -> tuple[dict[str, Any], str | None]:
    """The text rule for the JSON, and a Hugging Face tokenizer's own JSON (None: a vocabulary)."""
    enc = grounder.model.text_encoder
    vocab, max_words = getattr(enc, "vocab", None), getattr(enc, "max_words", None)
    if isinstance(vocab, Vocabulary) and isinstance(max_words, int):
        return {"kind": "vocabulary",
                "tokenizer": "vgkit.text.tokenize, truncated to max_words; an empty phrase is "
                             "<unk>",
                "vocab": vocab.itos, "max_words": max_words, "pad_id": vocab.pad_id,
                "unk_id": vocab.unk_id}, None
    tok: Any = getattr(enc, "tokenizer", None)
    max_tokens = getattr(enc, "max_tokens", None)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and isinstance(max_tokens, int) and tok.pad_token is not None:
        # Padded to max_tokens: torch's TorchScript exporter records nn.MultiheadAttention's
        # key length as a constant (pytorch/pytorch#99516), which a fusion over words would
        # then need; every padded word is masked, so the boxes are the same.
        return {"kind": "huggingface",
                "tokenizer": "Hugging Face tokenizers, the file beside: special tokens added, "
                             "truncated to max_tokens, padded to max_tokens",
                "file": tokenizer_file.name, "max_tokens": max_tokens,
                "pad_id": int(tok.pad_token_id), "pad_token": str(tok.pad_token),
                "padding_side": str(tok.padding_side),
                "truncation_side": str(tok.truncation_side)}, str(backend.to_str())
    name = grounder.recipe.model.text_encoder.name
    raise VgkitError(f"text encoder {name!r} has its own tokenizer: ONNX export supports a "
                     "vocabulary (vocab and max_words) or a Hugging Face fast tokenizer with a "
                     "pad token (tokenizer.backend_tokenizer and max_tokens)")


def _check_tokenizer(grounder: Grounder, meta: dict[str, Any], phrases: list[str],
                     tokenizer: Any) -> None:
    """The exported rule must give the model's own ids, or the file would ground other words."""
    text = meta["text"]
    longest = text.get("max_words", text.get("max_tokens", 0))
    probes = [*phrases, "a", "x " * (longest + 5), "?!", "Über-LONG, words."]
    own = grounder.model.tokenize(probes)
    ids, mask = text_ids(meta, probes, tokenizer)
    n = own.ids.shape[1]  # past the model's own padding, only padding (a fixed-length rule)
    rest = (ids[:, n:] == text["pad_id"]).all() and not mask[:, n:].any()
    if not (rest and np.array_equal(own.ids.numpy(), ids[:, :n])
            and np.array_equal(own.mask.numpy(), mask[:, :n])):
        name = grounder.recipe.model.text_encoder.name
        raise VgkitError(f"text encoder {name!r} tokenizes differently from the rule ONNX "
                         "export writes: it cannot be exported")


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, first: str,
            names: list[str], free_words: bool) -> None:
    words = {0: "batch", 1: "words"} if free_words else {0: "batch"}
    axes: dict[str, dict[int, str]] = {first: {0: "batch"}, "ids": words, "mask": words,
                                       names[0]: {0: "batch"}}
    for n in names[1:]:
        axes[n] = {0: "batch"} if n == "alpha_I" else words
    tmp = path.with_name(f".{path.name}.tmp")
    # the TorchScript exporter's deprecation and trace notes, and its C++ shape-inference
    # notes on packed sequences (the parity check runs other batch sizes and lengths)
    with warnings.catch_warnings(), _quiet_stderr():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=[first, "ids", "mask"], output_names=names,
                          dynamic_axes=axes)
    os.replace(tmp, path)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C++ log lines); Python exceptions still carry the errors."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def export_onnx(grounder: Grounder, out: str | os.PathLike[str], *, samples: int = 8,
                pairs: list[tuple[ImageLike, str]] | None = None) -> ExportResult:
    """Write the whole model, the heads and the JSON beside them; check them on real inputs.

    The check grounds `pairs` (default: up to `samples` images of the run's dataset, each
    with a phrase of its own) with PyTorch and with onnxruntime, in one batch.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise VgkitError(f"ONNX export needs {exc.name}: pip install 'vgkit[export]'") from None
    model_path, heads_path, meta_path = paths(out)
    model = grounder.model
    if model.blind:
        raise VgkitError(f"{grounder.recipe.name} reads no image: there is no image model to "
                         "export")
    if grounder.device.type != "cpu":
        raise VgkitError("ONNX export runs on the CPU: load the run with device='cpu'")
    if pairs is None:
        from vgkit.data.samples import dataset_samples

        pairs = [(s.file, s.phrase) for s in dataset_samples(grounder.recipe, samples)]
    if not pairs:
        raise VgkitError("no (image, phrase) pairs to check the export on: the run's dataset "
                         f"lists no images under {grounder.recipe.data_root()}")
    pictures = [open_image(im) for im, _ in pairs]
    phrases = [p for _, p in pairs]
    for p in phrases:
        check_phrase(model, p)
    spec = model.spec
    meta: dict[str, Any] = {
        "format": FORMAT, "version": 1, "recipe": grounder.recipe.name,
        "run": str(grounder.run), "which": grounder.which,
        "model": model_path.name, "heads": heads_path.name,
        "preprocess": {**grounder.transform.describe(), "channels": "RGB",
                       "layout": "[B, 3, H, W] float32, (pixel / 255 - mean) / std",
                       "exif": "orientation applied (the picture as a viewer shows it)"},
        "features": {"channels": spec.channels, "grid": list(spec.grid)},
        "boxes": "xyxy in input pixels; original = (input - offset) / scale, clipped to the "
                 "image, with ImageTransform.geometry's scale and offset",
    }
    meta["text"], tokenizer_json = _text_rule(grounder, tokenizer_path(model_path))
    tokenizer = None if tokenizer_json is None else hf_tokenizer(meta["text"], tokenizer_json)
    _check_tokenizer(grounder, meta, phrases, tokenizer)
    text = TextInputs(*map(torch.from_numpy, text_ids(meta, phrases[:2], tokenizer)))
    x = torch.stack([grounder.transform(p) for p in pictures[:2]])
    with torch.no_grad():
        feats = model.encode_image(x)
        probe = model(text, features=feats)  # which attention maps the model gives
    names = ["boxes"] + [n for n in ("alpha_I", "alpha_T") if getattr(probe.state, n) is not None]
    meta["outputs"] = names
    model_path.parent.mkdir(parents=True, exist_ok=True)
    free = tokenizer is None  # a Hugging Face rule pads every phrase to max_tokens
    _export(_Whole(model, names).eval(), (x, text.ids, text.mask), model_path, "images", names,
            free)
    _export(_Heads(model, names).eval(), (feats, text.ids, text.mask), heads_path, "features",
            names, free)
    if tokenizer_json is not None:
        atomic_write_text(tokenizer_path(model_path), tokenizer_json)
    atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
    return _parity(grounder, OnnxGrounder(model_path), list[ImageLike](pictures), phrases)


def _parity(grounder: Grounder, onnx: OnnxGrounder, pictures: list[ImageLike],
            phrases: list[str]) -> ExportResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown words were reported by check_phrase
        want = grounder.predict(pictures, phrases)
        got = onnx.predict(pictures, phrases)
        single = onnx.predict(pictures[0], phrases[0])  # a batch of one, the other length
        x = torch.stack([grounder.transform(open_image(p)) for p in pictures])
        with torch.no_grad():
            feats = grounder.model.encode_image(x).numpy()
        heads = onnx.predict(pictures, phrases, features=feats)

    def box_diff(preds: list[Prediction], ref: list[Prediction]) -> float:
        return float(max(np.abs(np.subtract(p.box, r.box)).max()
                         for p, r in zip(preds, ref, strict=True)))

    def map_diff(key: str) -> float | None:
        pairs = [(getattr(g, key), getattr(w, key)) for g, w in zip(got, want, strict=True)]
        if any(a is None or b is None for a, b in pairs):
            return None
        return float(max(np.abs(a - b).max() for a, b in pairs))

    return ExportResult(onnx.path, onnx.heads_path, onnx.meta_path, len(phrases),
                        max(box_diff(got, want), box_diff([single], want[:1])),
                        box_diff(heads, want),
                        map_diff("attention"), map_diff("word_attention"),
                        onnx.tokenizer_file)


class OnnxGrounder:
    """An exported model (``x.onnx`` beside ``x.json``) grounding phrases with onnxruntime."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise VgkitError(f"ONNX models need {exc.name}: pip install 'vgkit[export]'") from None
        self.path, self.heads_path, self.meta_path = paths(path)
        for p in (self.path, self.meta_path):
            if not p.is_file():
                raise VgkitError(f"missing {p}: vgkit export writes the model and its .json "
                                 "side by side")
        try:
            self.meta: dict[str, Any] = json.loads(self.meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise VgkitError(f"{self.meta_path}: unreadable ({exc})") from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
            raise VgkitError(f"{self.meta_path}: not a vgkit ONNX description "
                             f"(format {FORMAT!r})")
        pre = self.meta["preprocess"]
        self.transform = ImageTransform(tuple(pre["size"]), pre["mode"])
        self.grid: tuple[int, int] = tuple(self.meta["features"]["grid"])
        self.tokenizer: Any = None
        self.tokenizer_file: Path | None = None
        if self.meta["text"].get("kind") == "huggingface":
            self.tokenizer_file = tokenizer_path(self.path)
            self.tokenizer = self._read_tokenizer(self.tokenizer_file)
        opts = ort.SessionOptions()
        try:
            self.session = ort.InferenceSession(str(self.path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for a damaged file
            raise VgkitError(f"{self.path}: onnxruntime cannot load it "
                             f"({str(exc).splitlines()[0][:300]})") from None
        self._heads: Any = None
        self._ort = ort

    def __repr__(self) -> str:
        return f"OnnxGrounder({self.meta.get('recipe')!r} from {str(self.path)!r})"

    def _read_tokenizer(self, path: Path) -> Any:
        """x.tokenizer.json beside the model (never a path the JSON names)."""
        if not path.is_file():
            raise VgkitError(f"missing {path}: vgkit export writes the Hugging Face tokenizer "
                             "beside the model")
        try:
            return hf_tokenizer(self.meta["text"], path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise VgkitError(f"{path}: not a tokenizer this model can use "
                             f"({str(exc).splitlines()[0][:300] if str(exc) else exc!r})") from None
        except Exception as exc:  # the tokenizers package raises its own types for bad JSON
            raise VgkitError(f"{path}: the tokenizers package cannot read it "
                             f"({str(exc).splitlines()[0][:300]})") from None

    def predict(self, image: ImageLike | list[ImageLike], phrase: str | list[str], *,
                features: np.ndarray | None = None) -> Any:
        """One Prediction for one (image, phrase); a list for lists of the same length.

        With `features` [B, C, h, w] (the backbone's maps of the images) the heads file runs.
        """
        single = not isinstance(image, list)
        images = image if isinstance(image, list) else [image]
        phrases = phrase if isinstance(phrase, list) else [phrase]
        if len(images) != len(phrases):
            raise VgkitError(f"{len(images)} images and {len(phrases)} phrases: give as many of "
                             "each")
        for p in phrases:
            if not tokenize(p):
                raise VgkitError(f"the phrase {p!r} has no words: give the expression to ground")
        pictures = [open_image(im) for im in images]
        ids, mask = text_ids(self.meta, phrases, self.tokenizer)
        if features is None:
            x = np.stack([self.transform(p).numpy() for p in pictures])
            outs = self.session.run(None, {"images": x, "ids": ids, "mask": mask})
        else:
            outs = self._heads_session().run(None, {"features": features.astype(np.float32),
                                                    "ids": ids, "mask": mask})
        named = dict(zip(self.meta["outputs"], outs, strict=True))
        w = torch.tensor([float(p.size[0]) for p in pictures])
        h = torch.tensor([float(p.size[1]) for p in pictures])
        boxes = self.transform.box_to_original(torch.from_numpy(named["boxes"]), w, h).tolist()
        preds = []
        for b, p in enumerate(phrases):
            a_I = named.get("alpha_I")
            a_T = named.get("alpha_T")
            att = None if a_I is None else a_I[b].reshape(self.grid)
            word = None if a_T is None else a_T[b][mask[b]]
            words = None if word is None else words_for(p, len(word))
            preds.append(Prediction(p, tuple(boxes[b]), pictures[b].size, att, words, word))
        return preds[0] if single else preds

    def _heads_session(self) -> Any:
        if self._heads is None:
            if not self.heads_path.is_file():
                raise VgkitError(f"missing {self.heads_path}: the heads are exported beside "
                                 "the model")
            self._heads = self._ort.InferenceSession(str(self.heads_path),
                                                     providers=["CPUExecutionProvider"])
        return self._heads

    def figure(self, image: ImageLike, phrase: str,
               prediction: Prediction | None = None) -> Image.Image:
        """The picture of one prediction, as Grounder.figure draws it."""
        picture = open_image(image)
        pred = prediction or self.predict(picture, phrase)
        a_I = None if pred.attention is None else torch.from_numpy(pred.attention).flatten()
        a_T = None if pred.word_attention is None else torch.from_numpy(pred.word_attention)
        return render_figure(picture, phrase, list(pred.box), alpha_I=a_I, alpha_T=a_T,
                             grid=self.grid, transform=self.transform)
