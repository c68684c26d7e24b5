"""Several splits in one evaluation: one prediction pass, each image's maps read once, per-split scores."""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch

from vgkit.data.index import Record
from vgkit.engine.bundle import ExprSet, eval_order
from vgkit.engine.evaluate import ious, predict, predict_splits, split_scores
from vgkit.engine.protocols import parse_protocols
from vgkit.engine.run import choose_splits, evaluate_splits
from vgkit.errors import VgkitError


def _exprs(images: list[str]) -> ExprSet:
    recs = [Record(image_id=i, image_path=f"{i}.jpg", width=10, height=10, box=(0, 0, 5, 5),
                   phrase=f"thing {k}", tokens=("thing",), split="test")
            for k, i in enumerate(images)]
    n = len(recs)
    return ExprSet.of(recs, torch.zeros(n, 4), torch.full((n, 2), 10.0), [])


def test_eval_order_keeps_an_images_expressions_in_one_batch():
    ex = _exprs(["a", "b", "a", "c", "b", "a", "c", "b", "c"])  # 3 images x 3 expressions
    order = eval_order(ex, 4)
    assert order == [[0, 2, 5], [1, 4, 7], [3, 6, 8]]  # 3 + 3 > 4: a new batch per image
    # an image with more expressions than a batch fills whole batches, the rest packs on
    ex = _exprs(["a"] * 6 + ["b"])
    assert eval_order(ex, 4) == [[0, 1, 2, 3], [4, 5, 6]]
    assert sorted(i for b in eval_order(ex, 3) for i in b) == list(range(7))


def test_choose_splits_all_order_and_errors():
    have = ["test", "testA", "testB", "train", "trainval", "val"]
    assert choose_splits("all", have, "refcoco") == ["val", "testA", "testB", "test"]
    assert choose_splits("testB, val", have, "refcoco") == ["testB", "val"]
    assert choose_splits(["val", "val"], have, "refcoco") == ["val"]
    with pytest.raises(VgkitError, match=r"dataset 'refcoco' has no split 'testC'; splits: test, "
                                         r"testA, testB, train, trainval, val"):
        choose_splits("val,testC", have, "refcoco")
    with pytest.raises(VgkitError, match="all stands alone"):
        choose_splits("all,val", have, "refcoco")
    with pytest.raises(VgkitError, match="empty split name"):
        choose_splits("val,", have, "refcoco")
    with pytest.raises(VgkitError, match="no split besides train"):
        choose_splits("all", ["train"], "mine")


def test_one_pass_reads_each_images_maps_once_across_splits(ev, monkeypatch):
    bundle, model = ev.bundle, ev.model
    splits = {"val": bundle.split("val"), "test": bundle.split("test")}
    assert not set(splits["val"].image_ids) & set(splits["test"].image_ids)
    reads: Counter[int] = Counter()
    get = bundle.cache.get

    def counting_get(rows):
        reads.update(torch.as_tensor(rows).tolist())
        return get(rows)

    monkeypatch.setattr(bundle.cache, "get", counting_get)
    # a small batch (one more than the most expressions of any image): cut into equal
    # chunks, the image-sorted expressions would split some image over two batches
    per_image = Counter(r.image_id for e in splits.values() for r in e.records)
    batch = max(per_image.values()) + 1
    ends = set(torch.tensor(list(per_image[i] for i in sorted(per_image))).cumsum(0).tolist())
    assert any(k not in ends for k in range(batch, sum(per_image.values()), batch))
    preds, union = predict_splits(model, bundle, splits, batch_size=batch,
                                  device=torch.device("cpu"))
    images = sorted(set(splits["val"].image_ids) | set(splits["test"].image_ids))
    assert union.image_ids == images
    assert len(union) == len(splits["val"]) + len(splits["test"])
    assert sorted(reads) == sorted(bundle.cache.rows(images).tolist())
    assert set(reads.values()) == {1}  # each image's maps read once for both splits
    # the same boxes as one split at a time
    for name, exprs in splits.items():
        alone = predict(model, bundle, exprs, batch_size=64, device=torch.device("cpu"))
        assert preds[name].exprs is exprs
        assert torch.allclose(preds[name].boxes, alone.boxes, atol=1e-3)


def test_a_split_given_twice_is_predicted_once(ev):
    test = ev.bundle.split("test")
    preds, union = predict_splits(ev.model, ev.bundle, {"a": test, "b": test},
                                  device=torch.device("cpu"))
    assert len(union) == len({(r.image_id, r.phrase) for r in test.records})
    assert torch.equal(preds["a"].boxes, preds["b"].boxes)


def test_split_scores_count_unscored_as_failures(ev):
    whole = split_scores(ev.preds, parse_protocols("all"))
    v = ious(ev.preds.boxes, torch.tensor([r.box for r in ev.preds.exprs.records]))
    assert whole["n"] == whole["scored"] == len(ev.preds.exprs)
    assert whole["protocols"]["iou>=0.5"]["correct"] == int((v >= 0.5).sum())
    drop = set(range(3))
    less = split_scores(ev.preds.without(drop, "made unscored"), parse_protocols("all"))
    assert less["n"] == whole["n"] and less["scored"] == whole["n"] - 3
    assert less["unscored"] == {"made unscored": 3}
    for name, got in less["protocols"].items():
        lost = int(sum(bool(x) for x in _correct(ev.preds, name)[:3]))
        assert got["correct"] == whole["protocols"][name]["correct"] - lost
        assert got["acc"] == pytest.approx(got["correct"] / whole["n"])  # the whole split


def _correct(preds, name):
    from vgkit.engine.protocols import score

    return score(preds.boxes, torch.tensor([r.box for r in preds.exprs.records]), name).tolist()


@pytest.fixture(scope="module")
def multi(tiny_run):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_splits(tiny_run.run, "all", protocols="all", device="cpu", progress=False)


def test_evaluate_splits_scores_every_split_under_every_protocol(multi, ev):
    assert multi.splits == ["val", "test"]
    assert [p.name for p in multi.protocols] == ["iou>=0.5", "iou>0.5", "giou>=0.5", "inclusive"]
    assert multi.images == len(set(multi.bundle.split("val").image_ids)
                               | set(multi.bundle.split("test").image_ids))
    s = multi.summary()
    assert s["splits"] == ["val", "test"] and set(s["results"]) == {"val", "test"}
    for name in multi.splits:
        r = s["results"][name]
        assert r["n"] == len(multi.bundle.split(name)) == r["scored"]
        assert r["unscored"] == {}
        assert set(r["protocols"]) == {"iou>=0.5", "iou>0.5", "giou>=0.5", "inclusive"}
        assert r["protocols"]["iou>0.5"]["correct"] <= r["protocols"]["iou>=0.5"]["correct"]
    # the test split's numbers are those of the one-split evaluation
    single = split_scores(ev.preds, multi.protocols)
    assert s["results"]["test"]["protocols"] == single["protocols"]
    assert s["results"]["test"]["miou"] == pytest.approx(single["miou"], abs=1e-5)


def test_evaluate_splits_names_bad_splits_and_protocols_before_any_work(tiny_run):
    with pytest.raises(VgkitError, match=r"no split 'testA'; splits: test, train, val"):
        evaluate_splits(tiny_run.run, "val,testA", device="cpu", progress=False)
    with pytest.raises(VgkitError, match=r"unknown protocol 'hu'"):
        evaluate_splits(tiny_run.run, "all", protocols="hu", device="cpu", progress=False)


def test_grounder_evaluate_takes_splits_and_protocols(tiny_run, multi):
    import vgkit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = vgkit.load(tiny_run.run, device="cpu")
        out = g.evaluate(splits=["val", "test"], protocol="all")
        one = g.evaluate("test", protocol="giou>=0.5")
    assert out["results"] == multi.summary()["results"]
    assert one["protocols"] == {"giou>=0.5": out["results"]["test"]["protocols"]["giou>=0.5"]}
    assert one["n"] == out["results"]["test"]["n"]
    with pytest.raises(VgkitError, match="give one of them"):
        g.evaluate("test", splits="all")
