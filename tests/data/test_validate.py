"""Issue #11, class 6: one validator for every index, hand-made ones included."""

from __future__ import annotations

import json

import pytest
from referit_forms import write_hu
from typer.testing import CliRunner

from vgkit.cli import app
from vgkit.data.index import BOX_CONVENTION, DatasetIndex
from vgkit.data.synth import generate
from vgkit.data.validate import box_problem, check_index
from vgkit.errors import VgkitError

runner = CliRunner()


def _rec(image_id="1", box=(10, 10, 50, 40), phrase="the dog", split="train", **kw):
    d = {"image_id": image_id, "image_path": f"images/{image_id}.jpg", "width": 100,
         "height": 80, "box": list(box), "phrase": phrase, "split": split}
    return {**d, **kw}


# (record, problem kind or None); the positions are what check_index must name.
HOSTILE = [
    (_rec(), None),
    (_rec(box=(20, 10, 20, 40)), "degenerate_box"),  # zero width
    (_rec(box=(50, 10, 20, 40)), "degenerate_box"),  # negative width
    (_rec(box=(10, 40, 50, 10)), "degenerate_box"),  # negative height
    (_rec(box=(60, 10, 130, 40)), "box_outside_image"),
    (_rec(box=(-5, 10, 50, 40)), "box_outside_image"),
    (_rec(box=(10, 10, float("nan"), 40)), "nan_box"),
    (_rec(box=(10, 10, float("inf"), 40)), "nan_box"),
    (_rec(), "duplicate"),  # the first record again
    (_rec(split="trainval"), None),  # trainval repeats train under its own name
    (_rec(phrase="the dog", sent_id=1), None),  # another player's identical phrase
    (_rec(phrase="   "), "empty_phrase"),
    (_rec(width=-1), "bad_image_size"),
    (_rec(width=0, height=0, box=(0, 0, 500, 500)), None),  # size unknown: not checked
    (_rec(box=(0, 0, 100.0005, 80)), None),  # within the float epsilon
]


def _write(d, records, *, raw_lines=()):
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"name": "mine", "source": "by hand",
                                                 "box_convention": BOX_CONVENTION}))
    # json.dumps writes NaN / Infinity, which json.loads (and so vgkit) reads back.
    (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records)
                                     + "".join(raw_lines))
    return d


def _hostile_index(tmp_path):
    return _write(tmp_path / "idx", [r for r, _ in HOSTILE])


def test_check_index_counts_and_names_each_kind(tmp_path):
    ix = DatasetIndex.load(_hostile_index(tmp_path))
    assert ix.records[0].tokens == ("the", "dog")  # tokens left out: tokenized on load
    check = check_index(ix)
    want = {i: kind for i, (_, kind) in enumerate(HOSTILE) if kind}
    assert check.invalid == want
    assert check.counts == {"bad_image_size": 1, "nan_box": 2, "degenerate_box": 3,
                            "box_outside_image": 2, "empty_phrase": 1, "duplicate": 1}
    assert not check.ok
    assert check.summary() == ("10 invalid of 15 records: bad_image_size 1, nan_box 2, "
                               "degenerate_box 3, box_outside_image 2, empty_phrase 1, "
                               "duplicate 1")
    assert check.examples["nan_box"][0].startswith("record 6 (train, image 1, #0): box [10.0")
    assert "nan" in check.examples["nan_box"][0]
    assert "record 8" in check.examples["duplicate"][0]
    assert "outside 100x80 image" in check.examples["box_outside_image"][0]
    valid = check.valid(ix)
    assert len(valid) == 5 and valid.name == "mine" and valid.meta == ix.meta
    assert check_index(valid).ok
    meta = check.as_meta()
    assert meta["invalid"] == 10 and meta["counts"] == check.counts
    json.dumps(meta)  # JSON-ready


def test_check_index_strict(tmp_path):
    ix = DatasetIndex.load(_hostile_index(tmp_path))
    with pytest.raises(VgkitError, match=r"degenerate_box.*record 1 .*strict") as exc:
        check_index(ix, strict=True)
    assert "\n" not in str(exc.value)


def test_box_problem():
    assert box_problem((0, 0, 1, 1), 1, 1) is None
    assert box_problem((0, 0, 1, 1.01), 1, 1) == "box_outside_image"
    assert box_problem((0, 0, 1, 1)) is None
    assert box_problem((0, 0, 1)) == "nan_box"
    assert box_problem(("a", 0, 1, 1)) == "nan_box"
    assert box_problem((0, 0, 0, 1)) == "degenerate_box"


def test_synthetic_validates_clean(tmp_path):
    ix = generate(tmp_path / "syn", n_images=10, seed=3, progress=False)
    assert len(ix) and check_index(ix).ok


def _one_error(res, *parts):
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    text = " ".join(res.output.split())
    return res.exit_code == 2 and len(errors) == 1 and all(p in text for p in parts)


def test_info_names_and_counts_problems(tmp_path):
    d = _hostile_index(tmp_path)
    res = runner.invoke(app, ["data", "info", str(d)])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "problems: none" not in out
    assert "10 invalid of 15 records" in out
    for kind in ("bad_image_size 1", "nan_box 2", "degenerate_box 3", "box_outside_image 2",
                 "empty_phrase 1", "duplicate 1"):
        assert kind in out
    for kind in ("bad_image_size:", "nan_box:", "degenerate_box:", "box_outside_image:",
                 "empty_phrase:", "duplicate:"):
        assert kind in out  # an example naming a record for each kind
    assert "valid records only" in out and "box area / image area" in out
    res = runner.invoke(app, ["data", "info", str(d), "--strict"])
    assert _one_error(res, "degenerate_box", "record 1")


def test_info_clean_index(tmp_path):
    d = _write(tmp_path / "idx", [_rec(), _rec("2", box=(0, 0, 100, 80))])
    for args in ([], ["--strict"]):
        res = runner.invoke(app, ["data", "info", str(d), *args])
        assert res.exit_code == 0 and "problems: none" in res.output, res.output


def test_prepare_reports_and_strict(tmp_path):
    # A negative size in referit_imsize.json survives the loader: the validator names it.
    root = write_hu(tmp_path / "r", {"train": {"1_1": ["ok"], "2_1": ["bad size"]}},
                    {"1_1": [0, 0, 9, 9], "2_1": [0, 0, 9, 9]}, {"1": [100, 80], "2": [-5, 50]})
    args = ["data", "prepare", "referit", "--root", str(root), "--splits", "train"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "idx")])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "problems: none" not in out and "1 invalid of 2 records: bad_image_size 1" in out
    assert "image 2" in out and "-5x50" in out
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["meta"][
        "validation"]["counts"] == {"bad_image_size": 1}
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "strict"), "--strict"])
    assert _one_error(res, "bad_image_size", "image 2")
    assert not (tmp_path / "strict").exists()


@pytest.mark.parametrize(("line", "says"), [
    ("{not json\n", "not valid JSON"),
    ("[1, 2]\n", "expected a JSON object"),
    (json.dumps({k: v for k, v in _rec().items() if k != "box"}) + "\n", "missing field 'box'"),
    (json.dumps(_rec(width="100")) + "\n", "field 'width' must be an integer, got '100'"),
    (json.dumps(_rec(width=True)) + "\n", "field 'width' must be an integer"),
    (json.dumps(_rec(box=[1, 2, 3])) + "\n", "field 'box' must be 4 numbers"),
    (json.dumps(_rec(box=[1, 2, None, 3])) + "\n", "field 'box' must be 4 numbers"),
    (json.dumps(_rec(tokens="the dog")) + "\n", "field 'tokens' must be a list of strings"),
    (json.dumps(_rec(colour="red")) + "\n", "unknown field 'colour'"),
    (json.dumps(_rec(image_id=7)) + "\n", "field 'image_id' must be a string, got 7"),
])
def test_load_malformed_line(tmp_path, line, says):
    d = _write(tmp_path / "idx", [_rec()], raw_lines=["\n", line])
    with pytest.raises(VgkitError) as exc:
        DatasetIndex.load(d)
    msg = str(exc.value)
    assert "\n" not in msg and f"{d / 'records.jsonl'}: line 3" in msg and says in msg, msg
    res = runner.invoke(app, ["data", "info", str(d)])
    assert _one_error(res, "line 3", says)


def test_load_bad_manifest(tmp_path):
    d = _write(tmp_path / "idx", [_rec()])
    (d / "manifest.json").write_text('{"name": "x", ')
    with pytest.raises(VgkitError, match=r"manifest\.json: not valid JSON") as exc:
        DatasetIndex.load(d)
    assert "\n" not in str(exc.value)
    (d / "manifest.json").write_text("[]")
    with pytest.raises(VgkitError, match="not a vgkit manifest"):
        DatasetIndex.load(d)


def test_an_index_line_is_json_dumps_of_the_record_byte_for_byte():
    import json
    import random

    from vgkit.data.index import Record

    rng = random.Random(0)
    texts = ["man", "the \"red\" one", "back\\slash", "tab\there", "nl\nx", "ünïcödé 雪",
             "\x00ctl\x1f", "emoji 🙂", "", "surrogate \udc80 kept"]
    floats = [0.0, -0.0, 1.0, 0.1, 1e16, 1e-7, 123456789.125, 2.5e-320]
    for i in range(400):
        box = tuple(rng.choice(floats) if rng.random() < 0.3 else rng.uniform(-5, 5000)
                    for _ in range(4))
        if i % 50 == 0:
            box = (float("nan"), 1.0, float("inf"), 2.0)  # json writes NaN/Infinity
        r = Record(image_id=rng.choice(texts), image_path=rng.choice(texts),
                   width=rng.randint(0, 5000), height=rng.randint(0, 5000), box=box,
                   phrase=rng.choice(texts), tokens=tuple(rng.sample(texts, rng.randint(0, 4))),
                   split=rng.choice(texts), ref_id=rng.choice(texts), sent_id=rng.randint(0, 9),
                   extra={"type": "attribute"} if i % 7 == 0 else {})
        assert r.to_line() == json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False), r
