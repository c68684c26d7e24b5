"""Loading word embeddings from small GloVe / word2vec files written in tmp_path."""

from __future__ import annotations

import os
import zipfile

import pytest
import torch

from vgkit.data import embeddings as emb
from vgkit.data.embeddings import load_embeddings, random_embeddings
from vgkit.errors import VgkitError
from vgkit.text import Vocabulary

VECS = {
    "the": [0.1, 0.2, 0.3],
    "Paris": [1.0, 2.0, 3.0],
    "cat": [-1.0, 0.5, 0.25],
    "dog": [4.0, -4.0, 0.0],
}


def glove_text(vecs: dict[str, list[float]]) -> str:
    """GloVe lines ``word v1 ... vD``."""
    return "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vecs.items())


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary(["<pad>", "<go>", "<eos>", "<unk>", "cat", "paris", "dog", "zebra", "the"])


@pytest.fixture
def glove(tmp_path):
    p = tmp_path / "glove.3d.txt"
    p.write_text(glove_text(VECS), encoding="utf-8")
    return p


def load(path, vocab, tmp_path, **kw):
    kw.setdefault("cache_dir", tmp_path / "cache")
    kw.setdefault("progress", False)
    return load_embeddings(path, vocab, **kw)


def row(res, vocab, word):
    return res.weights[vocab.stoi[word]].tolist()


def test_rows_land_at_vocab_ids(glove, vocab, tmp_path):
    res = load(glove, vocab, tmp_path)
    assert res.weights.shape == (len(vocab), 3) and res.weights.dtype == torch.float32
    for w in ("the", "cat", "dog"):
        assert row(res, vocab, w) == pytest.approx(VECS[w])
    assert res.found == 4 and res.coverage == pytest.approx(4 / 5)
    assert res.missing == ["zebra"] and not res.from_cache
    assert res.source["format"] == "glove" and res.source["dim"] == 3


def test_lowercase_fallback_and_exact_wins(tmp_path, vocab):
    p = tmp_path / "cased.txt"
    # "Cat" comes first, but the exact "cat" further down must still win.
    p.write_text(
        glove_text({"Cat": [9, 9, 9], "PARIS": [7, 7, 7], "Paris": [1, 2, 3], "cat": [5, 6, 7]})
    )
    res = load(p, vocab, tmp_path)
    assert row(res, vocab, "cat") == [5, 6, 7]
    assert row(res, vocab, "paris") == [7, 7, 7]  # first case-insensitive match in file order
    assert res.source["exact"] == 1 and res.source["lowercase_fallback"] == 1


def test_pad_zero_and_missing_rows_deterministic(glove, vocab, tmp_path):
    a = load(glove, vocab, tmp_path, cache=False)
    b = load(glove, vocab, tmp_path, cache=False)
    c = load(glove, vocab, tmp_path, cache=False, seed=1)
    assert torch.count_nonzero(a.weights[vocab.pad_id]) == 0
    for w in ("zebra", "<unk>", "<go>", "<eos>"):
        i = vocab.stoi[w]
        assert torch.equal(a.weights[i], b.weights[i])
        assert not torch.equal(a.weights[i], c.weights[i])
        assert a.weights[i].abs().sum() > 0
    # found rows do not depend on the seed
    assert torch.equal(a.weights[vocab.stoi["cat"]], c.weights[vocab.stoi["cat"]])


def test_random_std_matches_found(tmp_path):
    words = [f"w{i}" for i in range(200)]
    g = torch.Generator().manual_seed(3)
    vecs = {w: (torch.randn(8, generator=g) * 5).tolist() for w in words[:100]}
    p = tmp_path / "big.txt"
    p.write_text(glove_text(vecs))
    res = load(p, Vocabulary(words), tmp_path, cache=False)
    assert res.coverage == pytest.approx(0.5)
    assert res.weights[4 + 100 :].std().item() == pytest.approx(5.0, rel=0.15)


def test_zip_single_and_named_member(tmp_path, vocab):
    z = tmp_path / "glove.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("glove.3d.txt", glove_text(VECS))
        zf.writestr("README.md", "not vectors")
    res = load(z, vocab, tmp_path)
    assert row(res, vocab, "dog") == VECS["dog"] and res.source["member"] == "glove.3d.txt"

    z2 = tmp_path / "two.zip"
    with zipfile.ZipFile(z2, "w") as zf:
        zf.writestr("a.txt", glove_text(VECS))
        zf.writestr("b.txt", glove_text({"cat": [0, 0, 1]}))
    with pytest.raises(VgkitError, match=r"several \.txt members.*a\.txt, b\.txt"):
        load(z2, vocab, tmp_path)
    res = load(f"{z2}::b.txt", vocab, tmp_path)
    assert row(res, vocab, "cat") == [0, 0, 1] and res.found == 1
    with pytest.raises(VgkitError, match=r"no member 'c\.txt'"):
        load(f"{z2}::c.txt", vocab, tmp_path)


def test_word2vec_text(tmp_path, vocab):
    p = tmp_path / "w2v.txt"
    p.write_text("4 3\n" + glove_text(VECS))
    res = load(p, vocab, tmp_path)
    assert res.source["format"] == "word2vec" and res.found == 4
    assert row(res, vocab, "cat") == VECS["cat"]
    with pytest.raises(VgkitError, match=r"w2v\.txt:1: header says dim 3, expected 5"):
        load(p, vocab, tmp_path, dim=5)
    plain = tmp_path / "plain.txt"
    plain.write_text(glove_text(VECS))
    with pytest.raises(VgkitError, match="needs an 'N D' header"):
        load(plain, vocab, tmp_path, format="word2vec")


def test_other_dimension_and_trailing_space(tmp_path, vocab):
    p = tmp_path / "d5.txt"
    p.write_text("cat 1 2 3 4 5 \nthe 5 4 3 2 1 \n")
    res = load(p, vocab, tmp_path)
    assert res.dim == 5 and row(res, vocab, "the") == [5, 4, 3, 2, 1]


@pytest.mark.parametrize("bad", ["zebra 1 2", "zebra 1 2 3 4"])
def test_inconsistent_dimension_names_line(tmp_path, vocab, bad):
    p = tmp_path / "bad.txt"
    p.write_text(glove_text(VECS) + "\n" + bad + "\n")
    with pytest.raises(VgkitError, match=r"bad\.txt:6: expected 3 values .* found [24]"):
        load(p, vocab, tmp_path)


def test_word_with_spaces_and_undecodable(tmp_path, vocab):
    p = tmp_path / "spaces.txt"
    data = glove_text({". . .": [1, 1, 1], "at name@domain.com": [2, 2, 2]}).encode()
    data += b"\xff\xfe 3 3 3\n" + glove_text({"cat": [1, 2, 3]}).encode()
    p.write_bytes(data)
    res = load(p, Vocabulary(["cat", "at name@domain.com"]), tmp_path)
    assert res.found == 2 and res.weights[5].tolist() == [2, 2, 2]
    assert res.source["spaced_words"] == 2 and res.source["skipped_undecodable"] == 1
    assert res.weights[4].tolist() == [1, 2, 3]


def test_cache_hit_does_not_reread(glove, vocab, tmp_path, monkeypatch):
    first = load(glove, vocab, tmp_path)
    files = list((tmp_path / "cache").glob("glove.3d-*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "cache").glob("*.tmp"))

    def boom(*a, **k):
        raise AssertionError("text file was read again")

    monkeypatch.setattr(emb, "_stream_vectors", boom)
    second = load(glove, vocab, tmp_path)
    assert second.from_cache and torch.equal(first.weights, second.weights)
    assert (second.found, second.coverage, second.missing) == (
        first.found,
        first.coverage,
        first.missing,
    )
    # a different seed or vocabulary is a different key
    with pytest.raises(AssertionError, match="read again"):
        load(glove, vocab, tmp_path, seed=7)
    with pytest.raises(AssertionError, match="read again"):
        load(glove, Vocabulary(["cat"]), tmp_path)


def test_cache_invalidated_when_file_changes(glove, vocab, tmp_path):
    load(glove, vocab, tmp_path)
    glove.write_text(glove_text({**VECS, "zebra": [3.0, 3.0, 3.0]}))
    st = glove.stat()
    os.utime(glove, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    res = load(glove, vocab, tmp_path)
    assert not res.from_cache and res.found == 5 and row(res, vocab, "zebra") == [3, 3, 3]


def test_env_cache_dir(glove, vocab, tmp_path, monkeypatch):
    monkeypatch.setenv("VGKIT_CACHE", str(tmp_path / "envcache"))
    load_embeddings(glove, vocab, progress=False)
    assert list((tmp_path / "envcache" / "embeddings").glob("*.safetensors"))
    assert load_embeddings(glove, vocab, progress=False).from_cache


def test_user_errors(tmp_path, vocab):
    with pytest.raises(VgkitError, match=r"not found: .*nope\.txt"):
        load(tmp_path / "nope.txt", vocab, tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(VgkitError, match="empty"):
        load(tmp_path / "empty.txt", vocab, tmp_path)
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    with pytest.raises(VgkitError, match="no vector lines"):
        load(tmp_path / "blank.txt", vocab, tmp_path)
    (tmp_path / "header.txt").write_text("0 300\n")
    with pytest.raises(VgkitError, match="no vector lines"):
        load(tmp_path / "header.txt", vocab, tmp_path)
    with pytest.raises(VgkitError, match="unknown embedding format"):
        load(tmp_path / "header.txt", vocab, tmp_path, format="fasttext")


def test_progress_prints_coverage(glove, vocab, tmp_path, capsys):
    load(glove, vocab, tmp_path, progress=True)
    assert "found 4 / 5 words (80.0%)" in capsys.readouterr().err
    load(glove, vocab, tmp_path, progress=True)
    assert "from cache" in capsys.readouterr().err


def test_random_embeddings(vocab):
    a, b = random_embeddings(vocab, dim=16, seed=2), random_embeddings(vocab, dim=16, seed=2)
    assert a.weights.shape == (len(vocab), 16) and torch.equal(a.weights, b.weights)
    assert torch.count_nonzero(a.weights[vocab.pad_id]) == 0
    assert a.found == 0 and a.coverage == 0.0
    assert not torch.equal(a.weights, random_embeddings(vocab, dim=16, seed=3).weights)


def test_spaced_first_line_with_dim_and_zip_without_txt(tmp_path, vocab):
    p = tmp_path / "first.txt"
    p.write_text(glove_text({". . .": [1, 1, 1], "cat": [1, 2, 3]}))
    assert row(load(p, vocab, tmp_path, dim=3), vocab, "cat") == [1, 2, 3]
    with pytest.raises(VgkitError, match=r"first\.txt:2: expected 4 values \(dim=4\), found 3"):
        load(p, vocab, tmp_path, dim=4)
    z = tmp_path / "bin.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("vectors.bin", b"\x00")
    with pytest.raises(VgkitError, match=r"no \.txt member.*vectors\.bin"):
        load(z, vocab, tmp_path)


def test_corrupt_cache_is_a_miss(glove, vocab, tmp_path):
    load(glove, vocab, tmp_path)
    (cached,) = (tmp_path / "cache").glob("*.safetensors")
    cached.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable embedding cache"):
        res = load(glove, vocab, tmp_path)
    assert not res.from_cache and res.found == 4
    assert load(glove, vocab, tmp_path).from_cache  # rewritten
