"""Issue #15, item 3: the index holds its records as columns; what it reads, writes and
hashes is what the one-object-per-record index did (``Record.to_line`` is the oracle)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random

import numpy as np
import pytest

from vgkit.data.index import DatasetIndex, Record
from vgkit.errors import VgkitError

TEXTS = ["man", 'the "red" one', "back\\slash", "tab\there", "nl\nx", "ünïcödé 雪", "\x00ctl\x1f",
         "emoji 🙂", ""]
PATHS = ["man", 'the "red" one', "ünïcödé 雪", "emoji 🙂", "a b"]  # as load() normalises them
FLOATS = [0.0, -0.0, 1.0, 0.1, 1e16, 1e-7, 1e-300, 123456789.125, 2.5e-320, 5e-324]


def _varied(n: int = 600, seed: int = 0) -> list[Record]:
    """Records with every field kind: unicode, extra dicts, empty tokens, odd floats and ints."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        box = tuple(rng.choice(FLOATS) if rng.random() < 0.3 else rng.uniform(-5, 5000)
                    for _ in range(4))
        if i % 50 == 0:
            box = (float("nan"), 1.0, float("inf"), -float("inf"))
        out.append(Record(
            image_id=rng.choice(TEXTS), image_path=f"images/{rng.choice(PATHS)}.jpg",
            width=rng.choice([0, 1, 480, -3, 2**31, 2**63 - 1, -(2**63)]),
            height=rng.randint(0, 5000), box=box, phrase=rng.choice(TEXTS),
            tokens=tuple(rng.sample(TEXTS, rng.randint(0, 4))), split=rng.choice(["train", "val"]),
            ref_id=rng.choice(TEXTS), sent_id=rng.choice([0, 1, -1, 2**40]),
            extra={"type": "attribute", "n": [i, "é"]} if i % 7 == 0 else {}))
    return out


def _old_text(records: list[Record]) -> str:
    return "".join(r.to_line() + "\n" for r in records)


def _same(a: Record, b: Record) -> bool:
    """Equal field by field, extra included, NaN equal to NaN; exact types (floats, tuples)."""
    for f in dataclasses.fields(Record):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "box":
            if type(x) is not type(y) or [type(v) for v in x] != [type(v) for v in y]:
                return False
            if [repr(v) for v in x] != [repr(v) for v in y]:
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


def test_records_come_back_equal_to_the_input():
    recs = _varied()
    index = DatasetIndex(recs, name="t")
    assert len(index) == len(index.records) == len(recs)
    assert all(map(_same, index.records, recs))
    assert all(map(_same, index, recs))
    assert _same(index.records[0], recs[0]) and _same(index.records[-1], recs[-1])
    assert _same(index.records[-len(recs)], recs[0])
    assert all(map(_same, index.records[5:17], recs[5:17]))
    assert all(map(_same, index.records[::-3], recs[::-3]))
    assert index.records[10:3] == []
    assert DatasetIndex(recs[1:50], name="t").records == recs[1:50] != index.records  # no NaN
    with pytest.raises(IndexError):
        index.records[len(recs)]
    with pytest.raises(IndexError):
        index.records[-len(recs) - 1]
    assert index.records[0].extra == {"type": "attribute", "n": [0, "é"]}
    assert not hasattr(index.records, "append")  # read-only


def test_lines_and_digest_equal_the_record_by_record_path(tmp_path):
    recs = _varied()
    text = _old_text(recs)
    index = DatasetIndex(recs, name="t")
    assert index.digest() == hashlib.sha256(text.encode()).hexdigest()
    index.save(tmp_path / "ix")
    assert (tmp_path / "ix" / "records.jsonl").read_bytes() == text.encode()
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest["digest"] == hashlib.sha256(text.encode()).hexdigest()
    assert manifest["splits"] == {"train": sum(r.split == "train" for r in recs),
                                  "val": sum(r.split == "val" for r in recs)}


def test_a_lone_surrogate_is_held_as_is():
    r = Record("i", "i.jpg", 1, 1, (0.0, 0.0, 1.0, 1.0), "surrogate \udc80 kept", ("\udc80",), "t")
    assert DatasetIndex([r], name="t").records[0] == r


def test_save_load_round_trip(tmp_path):
    recs = _varied()
    DatasetIndex(recs, name="t").save(tmp_path / "ix")
    back = DatasetIndex.load(tmp_path / "ix")
    assert all(map(_same, back, recs)) and len(back) == len(recs)
    assert back.digest() == DatasetIndex(recs, name="t").digest()
    back.save(tmp_path / "again")
    assert ((tmp_path / "again" / "records.jsonl").read_bytes()
            == (tmp_path / "ix" / "records.jsonl").read_bytes())


def test_records_the_columns_cannot_hold_are_kept_whole(tmp_path):
    base = Record("a", "a.jpg", 10, 10, (0.0, 0.0, 5.0, 5.0), "p", ("p",), "train")
    odd = [dataclasses.replace(base, box=(0, 0, 5, 5)),  # ints in a box: written as ints
           dataclasses.replace(base, width=2**70),  # beyond int64
           dataclasses.replace(base, height="80"),  # not an int (check_index's to judge)
           dataclasses.replace(base, box=[0.0, 0.0, 5.0, 5.0]),  # a list
           dataclasses.replace(base, tokens=["p"])]
    recs = [base, *odd, base]
    index = DatasetIndex(recs, name="t")
    assert [type(r.box) for r in index] == [type(r.box) for r in recs]
    assert index.records[1].box == (0, 0, 5, 5) and type(index.records[1].box[0]) is int
    assert index.records[2].width == 2**70 and index.records[3].height == "80"
    assert index.digest() == hashlib.sha256(_old_text(recs).encode()).hexdigest()
    assert '"box": [0, 0, 5, 5]' in index.records[1].to_line()
    assert [r.split for r in index.split("train")] == ["train"] * 7
    with pytest.raises(VgkitError, match=r"record 2 has width 1180591620717411303424, which"):
        index.column("width")
    assert index.column("box")[1].tolist() == [0.0, 0.0, 5.0, 5.0]  # the same numbers
    assert all(map(_same, index.split("train").records[1:6], odd))
    strange = dataclasses.replace(base, image_id=["a"], ref_id=None)  # not strings: kept as is
    index = DatasetIndex([base, strange, base], name="t")
    assert index.records[1] is strange and index.column("image_id") == ["a", ["a"], "a"]
    assert index.column("ref_id") == ["", None, ""]
    # a huge int read from a file is kept whole too, and round-trips
    DatasetIndex([recs[2]], name="t").save(tmp_path / "big")
    assert '"width": 1180591620717411303424' in (tmp_path / "big" / "records.jsonl").read_text()
    back = DatasetIndex.load(tmp_path / "big")
    assert _same(back.records[0], recs[2]) and back.digest() == DatasetIndex([recs[2]], name="t").digest()


def test_split_keeps_order_and_columns():
    recs = _varied(300)
    index = DatasetIndex(recs, name="t")
    for name in ("train", "val"):
        want = [r for r in recs if r.split == name]
        got = index.split(name)
        assert all(map(_same, got, want)) and len(got) == len(want)
        assert got.digest() == hashlib.sha256(_old_text(want).encode()).hexdigest()
        assert index.split_rows(name).tolist() == [k for k, r in enumerate(recs) if r.split == name]
        assert got.splits() == {name: len(want)}
    assert index.splits() == {"train": sum(r.split == "train" for r in recs),
                              "val": sum(r.split == "val" for r in recs)}
    with pytest.raises(VgkitError, match=r"^dataset 't' has no split 'test'; splits: train, val$"):
        index.split("test")
    with pytest.raises(VgkitError, match=r"has no split 'x'; splits: \(empty\)$"):
        DatasetIndex([], name="e").split("x")
    assert index.column("split") == [r.split for r in recs]
    assert index.column("image_id") == [r.image_id for r in recs]
    assert index.column("phrase") == [r.phrase for r in recs]
    assert index.column("tokens") == [r.tokens for r in recs]
    assert index.column("height").tolist() == [r.height for r in recs]
    assert index.column("width").dtype == np.int64  # 2**63 - 1 is in there
    assert index.column("height").dtype == np.int32
    box = index.column("box")
    assert box.shape == (300, 4) and not box.flags.writeable
    assert [repr(v) for v in box[7].tolist()] == [repr(v) for v in recs[7].box]
    with pytest.raises(VgkitError, match="no column 'colour'"):
        index.column("colour")


def test_load_builds_no_record_and_keeps_the_line_errors(tmp_path, monkeypatch):
    recs = _varied(50)
    d = DatasetIndex(recs, name="t").save(tmp_path / "ix")
    built = []
    monkeypatch.setattr(Record, "from_json", classmethod(lambda cls, x: built.append(x)))
    DatasetIndex.load(d)
    assert built == []
    lines = (d / "records.jsonl").read_text().splitlines(keepends=True)
    bad = json.loads(lines[3])
    bad["sent_id"] = True
    (d / "records.jsonl").write_text("".join([*lines[:3], json.dumps(bad) + "\n", *lines[4:]]))
    with pytest.raises(VgkitError) as exc:
        DatasetIndex.load(d)
    assert str(exc.value) == (f"{d / 'records.jsonl'}: line 4: field 'sent_id' must be an "
                              "integer, got True")
    (d / "records.jsonl").write_text("".join([*lines[:2], '{"box": [1, 2\n', *lines[3:]]))
    with pytest.raises(VgkitError, match=r"records\.jsonl: line 3: not valid JSON \(") as exc:
        DatasetIndex.load(d)
    assert "\n" not in str(exc.value)


def test_load_without_tokens_tokenizes_and_paths_are_normalised(tmp_path):
    d = tmp_path / "ix"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"name": "h", "box_convention":
                                                 "xyxy-continuous-pixels"}))
    line = {"image_id": "1", "image_path": "./images//1.jpg", "width": 9, "height": 9,
            "box": [1, 2, 3, 4], "phrase": "The red Car", "split": "train"}
    (d / "records.jsonl").write_text(json.dumps(line) + "\n\n" + json.dumps(line) + "\n")
    index = DatasetIndex.load(d)
    r = index.records[1]
    assert len(index) == 2 and r.image_path == "images/1.jpg" and r.tokens == ("the", "red", "car")
    assert r.box == (1.0, 2.0, 3.0, 4.0) and type(r.box[0]) is float and r.extra == {}


def test_values_are_the_records_fields():
    recs = _varied(300)
    base = Record("a", "a.jpg", 10, 10, (0.0, 0.0, 5.0, 5.0), "p", ("p",), "train")
    recs[7] = dataclasses.replace(base, box=(0, 0, 5, 5), width=2**70)  # kept whole
    index = DatasetIndex(recs, name="t")
    names = ("box", "split", "tokens", "width", "phrase", "extra", "image_path")
    want = [tuple(getattr(r, n) for n in names) for r in recs]
    got = list(index.values(*names))
    assert len(got) == len(want) and all(
        [repr(v) for v in g] == [repr(v) for v in w] for g, w in zip(got, want, strict=True))
    assert got[7][0] == (0, 0, 5, 5) and type(got[7][0][0]) is int
    assert list(index.values()) == [()] * 300
    with pytest.raises(VgkitError, match="no field 'colour'"):
        list(index.values("colour"))


def test_check_index_on_columns_finds_what_it_found_on_records():
    from vgkit.data.validate import check_index

    base = Record("a", "a.jpg", 10, 10, (0.0, 0.0, 5.0, 5.0), "p", ("p",), "train")
    recs = [base, dataclasses.replace(base, box=(0, 0, 5, 5)),  # ints equal to floats: a repeat
            dataclasses.replace(base, box=(-0.0, 0.0, 5.0, 5.0)),  # -0.0 == 0.0: a repeat
            dataclasses.replace(base, box=(0.0, 0.0, 50.0, 5.0)),
            dataclasses.replace(base, phrase=" ", tokens=()),
            dataclasses.replace(base, width=-1), dataclasses.replace(base, sent_id=1)]
    check = check_index(DatasetIndex(recs, name="t"))
    assert check.invalid == {1: "duplicate", 2: "duplicate", 3: "box_outside_image",
                             4: "empty_phrase", 5: "bad_image_size"}
    assert check.examples["duplicate"][0] == (
        "record 1 (train, image a, #0): repeats an earlier record: box [0, 0, 5, 5], phrase 'p'")
    with pytest.raises(VgkitError, match=r"^t: invalid record \(duplicate\): record 1 "):
        check_index(DatasetIndex(recs, name="t"), strict=True)
