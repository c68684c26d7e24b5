"""The synthetic dataset: deterministic, exact boxes, unique expressions, by-image splits."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vgkit.data import synth
from vgkit.data.index import DatasetIndex
from vgkit.data.synth import (
    PALETTE,
    ensure_synthetic,
    generate,
    load_scenes,
    load_synthetic,
    preview,
)
from vgkit.data.synth_lang import (
    VOCABULARY,
    Desc,
    Meaning,
    SceneObject,
    parse,
    resolve,
)
from vgkit.errors import VgkitError
from vgkit.text import tokenize

N = 40


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetIndex]:
    root = tmp_path_factory.mktemp("synth")
    return root, generate(root, N, seed=3, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a, b, c = (generate(tmp_path / d, 6, seed=s, progress=False)
               for d, s in (("a", 7), ("b", 7), ("c", 8)))
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert a.digest() == b.digest() and a.digest() != c.digest()
    assert (tmp_path / "a/images/syn000000.jpg").read_bytes() != (tmp_path / "c/images/syn000000.jpg").read_bytes()


def test_image_content_does_not_depend_on_n_images(tmp_path: Path) -> None:
    generate(tmp_path / "a", 3, seed=1, progress=False)
    generate(tmp_path / "b", 5, seed=1, progress=False)
    assert (tmp_path / "a/images/syn000002.jpg").read_bytes() == (tmp_path / "b/images/syn000002.jpg").read_bytes()


def test_files_and_record_fields(data: tuple[Path, DatasetIndex]) -> None:
    root, index = data
    assert index.name == "synthetic" and index.source == "synth"
    assert index.meta["seed"] == 3 and index.meta["n_images"] == N
    assert len({r.image_id for r in index}) == N  # every image has at least one expression
    for r in index:
        assert r.image_path == f"images/{r.image_id}.jpg"
        with Image.open(root / r.image_path) as im:
            assert im.format == "JPEG" and im.size == (r.width, r.height) == (320, 240)
        assert r.ref_id.startswith(r.image_id + "_")
        assert r.extra["type"] in ("attribute", "position", "relation")
        assert {"shape", "colour", "size"} <= set(r.extra)


def test_every_expression_refers_to_exactly_its_object(data: tuple[Path, DatasetIndex]) -> None:
    root, index = data
    scenes = load_scenes(root)
    for r in index:
        s = scenes[r.image_id]
        objs = synth.scene_objects(s["objects"])
        target = int(r.ref_id.rsplit("_", 1)[1])
        assert tuple(s["objects"][target]["box"]) == r.box
        meaning = parse(r.phrase)  # from the text alone, not from what the generator meant
        assert meaning.kind == r.extra["type"]
        assert resolve(meaning, objs, (r.width, r.height)) == [target], r.phrase
        o = s["objects"][target]
        assert (o["shape"], o["colour"], o["size"]) == (r.extra["shape"], r.extra["colour"], r.extra["size"])


def test_attribute_phrases_unique_by_direct_count(data: tuple[Path, DatasetIndex]) -> None:
    root, index = data
    scenes = load_scenes(root)
    for r in (r for r in index if r.extra["type"] == "attribute"):
        words = set(r.tokens) - {"the"}
        hits = [o for o in scenes[r.image_id]["objects"] if words <= {o["shape"], o["colour"], o["size"]}]
        assert len(hits) == 1 and tuple(hits[0]["box"]) == r.box, r.phrase


def test_no_phrase_names_two_boxes_in_an_image(data: tuple[Path, DatasetIndex]) -> None:
    _, index = data
    boxes = defaultdict(set)
    for r in index:
        boxes[r.image_id, r.phrase].add(r.box)
    assert all(len(b) == 1 for b in boxes.values())
    per_ref = defaultdict(list)
    for r in index:
        per_ref[r.ref_id].append(r)
    for recs in per_ref.values():
        assert 1 <= len(recs) <= 3 and [r.sent_id for r in recs] == list(range(len(recs)))
        assert len({r.phrase for r in recs}) == len(recs)


def test_boxes_are_tight_on_a_blank_redraw(data: tuple[Path, DatasetIndex]) -> None:
    root, _ = data
    for s in load_scenes(root).values():
        for o in s["objects"]:
            canvas = Image.new("L", (s["width"], s["height"]), 0)
            mask, (ox, oy) = synth.object_mask(o["shape"], o["cx"], o["cy"], o["radius"], o["angle"])
            canvas.paste(mask, (ox, oy))
            assert tuple(float(v) for v in canvas.getbbox()) == tuple(o["box"])
            x1, y1, x2, y2 = o["box"]
            assert 0 <= x1 < x2 <= s["width"] and 0 <= y1 < y2 <= s["height"]


def test_boxes_match_the_object_colour_in_the_jpeg(data: tuple[Path, DatasetIndex]) -> None:
    root, index = data
    scenes = load_scenes(root)
    pad = 4
    for r in index:
        o = scenes[r.image_id]["objects"][int(r.ref_id.rsplit("_", 1)[1])]
        img = np.asarray(Image.open(root / r.image_path).convert("RGB"), dtype=np.float32)
        x1, y1, x2, y2 = (int(v) for v in r.box)
        ox, oy = max(0, x1 - pad), max(0, y1 - pad)
        crop = img[oy:y2 + pad, ox:x2 + pad]
        near = np.linalg.norm(crop - np.array(o["rgb"], dtype=np.float32), axis=-1) < 50
        ys, xs = np.nonzero(near)
        found = (xs.min() + ox, ys.min() + oy, xs.max() + ox + 1, ys.max() + oy + 1)
        # JPEG softens edges and thin star tips: allow a couple of pixels, never more.
        assert np.allclose(found, r.box, atol=2), (r.phrase, found, r.box)
        # Even a star covers a good part of its box; clutter would not.
        assert near[y1 - oy:y2 - oy, x1 - ox:x2 - ox].mean() > 0.25
        assert np.linalg.norm(np.array(PALETTE[o["colour"]]) - o["rgb"]) < 25


def test_splits_are_by_image(data: tuple[Path, DatasetIndex]) -> None:
    _, index = data
    split_of = defaultdict(set)
    for r in index:
        split_of[r.image_id].add(r.split)
    assert all(len(s) == 1 for s in split_of.values())
    counts = defaultdict(int)
    for s in split_of.values():
        counts[next(iter(s))] += 1
    assert counts == {"train": 32, "val": 4, "test": 4}


def test_all_expression_types_occur(data: tuple[Path, DatasetIndex]) -> None:
    _, index = data
    types = {r.extra["type"] for r in index}
    assert types == {"attribute", "position", "relation"}


def test_tokens_and_vocabulary_are_small(data: tuple[Path, DatasetIndex]) -> None:
    _, index = data
    assert len(VOCABULARY) <= 60
    for r in index:
        assert list(r.tokens) == tokenize(r.phrase) and " ".join(r.tokens) == r.phrase
        assert set(r.tokens) <= set(VOCABULARY) and len(r.tokens) <= 10


def test_index_round_trips(data: tuple[Path, DatasetIndex]) -> None:
    root, index = data
    again = load_synthetic(root)
    assert [r.to_json() for r in again] == [r.to_json() for r in index]
    assert again.meta == json.loads(json.dumps(index.meta)) and again.digest() == index.digest()
    assert DatasetIndex.load(root).digest() == index.digest()


def test_load_synthetic_missing(tmp_path: Path) -> None:
    with pytest.raises(VgkitError, match="no synthetic dataset"):
        load_synthetic(tmp_path / "nothing")


def test_ensure_generates_only_when_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = synth.generate
    monkeypatch.setattr(synth, "generate", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = ensure_synthetic(tmp_path, 4, seed=0, progress=False)
    assert ensure_synthetic(tmp_path, 4, seed=0, progress=False).digest() == first.digest()
    assert len(calls) == 1
    ensure_synthetic(tmp_path, 3, seed=1, progress=False)
    assert len(calls) == 2
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"syn00000{i}.jpg" for i in range(3)]
    (tmp_path / "images/syn000000.jpg").unlink()  # a damaged copy is regenerated
    ensure_synthetic(tmp_path, 3, seed=1, progress=False)
    assert len(calls) == 3


def test_preview_writes_png(data: tuple[Path, DatasetIndex], tmp_path: Path) -> None:
    root, index = data
    out = preview(index, root, tmp_path / "p" / "grid.png", n=4)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 320 and im.height > 240


def test_resolver_refuses_borderline_scenes() -> None:
    def obj(shape: str, cx: float, cy: float, colour: str = "red") -> SceneObject:
        return SceneObject(shape, colour, "small", (cx - 10, cy - 10, cx + 10, cy + 10))

    size = (320, 240)
    tie = [obj("circle", 50, 100), obj("circle", 70, 200)]  # 20 px lead: too close to call
    assert resolve(Meaning("position", Desc("circle"), "leftmost"), tie, size) is None
    clear = [obj("circle", 50, 100), obj("circle", 250, 100)]
    assert resolve(Meaning("position", Desc("circle"), "leftmost"), clear, size) == [0]
    assert resolve(Meaning("position", Desc("circle"), "right"), clear, size) == [1]
    middle = [obj("circle", 50, 100), obj("circle", 163, 100)]  # near the vertical midline
    assert resolve(Meaning("position", Desc("circle"), "left"), middle, size) is None
    diag = [obj("circle", 100, 100), obj("square", 160, 160, "blue")]  # 45 degrees: not "left of"
    assert resolve(Meaning("relation", Desc("circle"), "left of", Desc("square")), diag, size) is None
    row = [obj("circle", 100, 110), obj("square", 160, 100, "blue"), obj("circle", 220, 100)]
    m = Meaning("relation", Desc("circle"), "left of", Desc("square", "blue"))
    assert resolve(m, row, size) == [0]
    assert parse(m.phrase()) == m and m.phrase() == "the circle left of the blue square"


@pytest.mark.parametrize("phrase", ["a red circle", "the red", "the circle near the square",
                                    "the leftmost circle on the left", "the circle left of the"])
def test_parse_rejects_off_grammar(phrase: str) -> None:
    with pytest.raises(VgkitError):
        parse(phrase)


def test_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(VgkitError):
        generate(tmp_path, 0, progress=False)
    with pytest.raises(VgkitError):
        generate(tmp_path, 2, splits=(0.5, 0.5), progress=False)  # type: ignore[arg-type]
