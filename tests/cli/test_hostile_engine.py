"""Issue #11 on the engine: every expression accounted for, one-line errors, no silent work.

Each test feeds one class of hostile input (a mistyped root, unreadable images, a
non-finite loss, damaged checkpoints, a bad device, an empty phrase) and checks
that the outcome is one clear line or an honest count, never a traceback or a
silently smaller split.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vgkit.cli import app
from vgkit.data.synth import generate
from vgkit.engine.train import NonFiniteLoss, Trainer
from vgkit.errors import VgkitError
from vgkit.recipe import load_recipe

SMALL = ("train.epochs=1", "data.image_size=[64, 64]")


def _invoke(runner, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return runner.invoke(app, [str(a) for a in args])


def _one_line_error(res, *needles: str) -> str:
    """The CLI failed with exit 2 and one ``error:`` line that contains every needle."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _records(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / "records.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- 4: a mistyped --root


def test_a_mistyped_root_makes_no_dataset(runner, tmp_path):
    typo = tmp_path / "data" / "synthtic"
    res = _invoke(runner, "train", "--recipe", "synthetic-attn-regression", "--root", typo,
                  "--out", tmp_path / "run", "--device", "cpu")
    _one_line_error(res, f"no synthetic dataset at {typo}", "vgkit data synth --out")
    assert not typo.exists()  # nothing generated, nothing extracted
    res = _invoke(runner, "features", "extract", "--dataset", "synthetic", "--root", typo,
                  "--backbone", "vgg16")
    _one_line_error(res, "no synthetic dataset at")
    assert not typo.exists()


def test_a_dataset_made_with_other_parameters_is_refused_not_regenerated(runner, tmp_path):
    root = tmp_path / "syn"
    generate(root, 12, seed=0, image_size=(96, 80), progress=False)
    before = (root / "records.jsonl").read_bytes()
    res = _invoke(runner, "train", "--recipe", "synthetic-bench", "--root", root,
                  "--out", tmp_path / "run", "--device", "cpu")
    _one_line_error(res, "n_images=12", "asked 8000", "--n-images 8000")
    assert (root / "records.jsonl").read_bytes() == before


# ---------------------------------------------------------------- 5: unreadable images


@pytest.fixture(scope="module")
def broken_images(tmp_path_factory, registry):
    """A tiny dataset whose first test and first train image are not images, trained 1 epoch."""
    base = tmp_path_factory.mktemp("broken")
    root, run = base / "syn", base / "run"
    generate(root, 20, seed=0, image_size=(96, 80), progress=False)
    recs = _records(root)
    broken = {next(r["image_id"] for r in recs if r["split"] == s) for s in ("test", "train")}
    for image_id in broken:
        (root / "images" / f"{image_id}.jpg").write_bytes(b"not a jpeg")
    recipe = load_recipe("synthetic-attn-regression", [f"data.root={root}", *SMALL],
                         registry=registry)
    with pytest.warns(UserWarning, match=r"dropped unreadable image \d+") as caught:
        Trainer(recipe, registry, run, device="cpu", progress=False).fit()
    return root, run, broken, recs, caught


def test_training_says_how_many_expressions_it_dropped_and_why(broken_images):
    _, _, broken, recs, caught = broken_images
    n_train = sum(r["split"] == "train" for r in recs)
    dropped = sum(r["split"] == "train" and r["image_id"] in broken for r in recs)
    msg = next(str(w.message) for w in caught if "dropped" in str(w.message))
    assert f"training on {n_train - dropped:,} of {n_train:,}" in msg
    assert f"unreadable image {dropped}" in msg


def test_eval_counts_unreadable_images_as_failures_in_table_and_json(broken_images, runner):
    _, run, broken, recs, _ = broken_images
    test = [r for r in recs if r["split"] == "test"]
    lost = sum(r["image_id"] in broken for r in test)
    assert lost > 0
    res = _invoke(runner, "eval", "--checkpoint", run, "--device", "cpu")
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "eval-test.json").read_text())
    assert summary["n"] == len(test) and summary["scored"] == len(test) - lost
    assert summary["unscored"] == {"unreadable image": lost}
    rows = [json.loads(x) for x in (run / "predictions-test.jsonl").read_text().splitlines()]
    assert len(rows) == len(test)  # every expression has its line
    assert sum(r.get("unscored") == "unreadable image" and not r["correct"] for r in rows) == lost
    correct = sum(r["correct"] for r in rows)
    assert summary["acc@0.5"] == pytest.approx(correct / len(test))  # the honest denominator
    out = " ".join(res.output.split())
    assert f"not scored: unreadable image {lost}" in out and "count as failures" in out


def test_eval_reading_images_every_step_counts_unreadable_ones_too(tmp_path, registry):
    """A trainable backbone reads pixels at eval time: a broken test image is unscored."""
    from vgkit.engine.run import evaluate_checkpoint

    root, run = tmp_path / "syn", tmp_path / "run"
    generate(root, 16, seed=1, image_size=(96, 80), progress=False)
    recs = _records(root)
    recipe = load_recipe("synthetic-attn-regression",
                         [f"data.root={root}", *SMALL, "model.backbone.frozen=false",
                          "train.workers=0", "model.feature_norm=none"], registry=registry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(recipe, registry, run, device="cpu", progress=False).fit()
    bad = next(r["image_id"] for r in recs if r["split"] == "test")
    (root / "images" / f"{bad}.jpg").write_bytes(b"\x00" * 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = evaluate_checkpoint(run, device="cpu", progress=False)
    lost = sum(r["split"] == "test" and r["image_id"] == bad for r in recs)
    assert len(ev.preds.exprs) + lost == sum(r["split"] == "test" for r in recs)
    assert ev.preds.exprs.excluded_counts() == {"unreadable image": lost}
    assert len(ev.preds.boxes) == len(ev.preds.exprs)


# ---------------------------------------------------------------- 7: the non-finite stop


def test_lr_inf_is_rejected_by_recipe_validation(registry):
    for bad in ("inf", "nan"):
        with pytest.raises(VgkitError, match=r"optim\.lr"):
            load_recipe("synthetic-attn-regression", [f"optim.lr={bad}"], registry=registry)


def test_a_nan_in_the_feature_cache_names_step_records_and_the_cache(tmp_path, registry,
                                                                     tiny_run):
    root = tmp_path / "syn"
    shutil.copytree(tiny_run.root, root, ignore=shutil.ignore_patterns("features"))
    recipe = load_recipe("synthetic-attn-regression", [f"data.root={root}", *SMALL,
                                                       "model.feature_norm=none"],
                         registry=registry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(recipe, registry, tmp_path / "run", device="cpu", progress=False)
    cache = trainer.data.cache
    feats = np.load(cache.directory / "features.npy", mmap_mode="r+")
    feats[:] = np.nan
    feats.flush()
    with pytest.raises(NonFiniteLoss) as exc:
        trainer.fit()
    msg = str(exc.value)
    assert "\n" not in msg
    assert "step 1" in msg and "on records syn" in msg
    assert f"feature cache {cache.directory}" in msg
    assert "no checkpoint was written" in msg  # none exists: none is named
    assert not (tmp_path / "run" / "checkpoints" / "last.safetensors").exists()


# ---------------------------------------------------------------- 8: damaged checkpoints


@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    """A copy of the tiny run that a test may damage."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run, run)
    return run


def test_a_truncated_best_checkpoint_is_one_line_that_offers_last(run_copy, runner):
    best = run_copy / "checkpoints" / "best.safetensors"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    res = _invoke(runner, "eval", "--checkpoint", run_copy, "--device", "cpu")
    _one_line_error(res, str(best), "truncated or damaged", "--which last")
    res = _invoke(runner, "eval", "--checkpoint", run_copy, "--device", "cpu", "--which", "last")
    assert res.exit_code == 0, res.output


def test_a_garbage_checkpoint_is_one_line(run_copy, runner):
    best = run_copy / "checkpoints" / "best.safetensors"
    best.write_bytes(b"\xff" * 64)
    _one_line_error(_invoke(runner, "eval", "--checkpoint", best, "--device", "cpu"), str(best))


def _rewrite(path: Path, edit_tensors=None, edit_meta=None) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    vg = json.loads(meta["vgkit"])
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(vg)
    save_file(tensors, str(path), metadata={"format": meta["format"], "vgkit": json.dumps(vg)})


def test_checkpoint_metadata_without_its_keys_is_one_line(run_copy, runner):
    best = run_copy / "checkpoints" / "best.safetensors"
    _rewrite(best, edit_meta=lambda m: (m.pop("recipe"), m.pop("vocab")))
    res = _invoke(runner, "eval", "--checkpoint", best, "--device", "cpu")
    _one_line_error(res, "metadata lacks recipe, vocab")


def test_tensors_that_do_not_fit_the_recipe_name_parameter_and_both_shapes(run_copy, runner):
    best = run_copy / "checkpoints" / "best.safetensors"
    with safe_open(str(best), framework="pt") as f:
        name = next(k for k in f.keys()  # noqa: SIM118 (safe_open is not iterable)
                    if k.startswith("model.head.") and k.endswith("weight"))
        shape = list(f.get_slice(name).get_shape())

    def grow(t):
        t[name] = torch.zeros(shape[0] + 3, *shape[1:])

    _rewrite(best, edit_tensors=grow)
    res = _invoke(runner, "eval", "--checkpoint", best, "--device", "cpu")
    _one_line_error(res, name[len("model."):], str([shape[0] + 3, *shape[1:]]), str(shape))


def test_resume_from_a_damaged_last_checkpoint_is_one_line(run_copy, runner, tiny_run):
    last = run_copy / "checkpoints" / "last.safetensors"
    last.write_bytes(last.read_bytes()[:100])
    res = _invoke(runner, "train", "--recipe", "synthetic-attn-regression", "--root",
                  tiny_run.root, "--out", run_copy, "--resume", "--device", "cpu",
                  "--set", "train.epochs=2", "--set", "data.image_size=[64, 64]")
    _one_line_error(res, str(last), "truncated or damaged")


# ---------------------------------------------------------------- 8: devices and sizes


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_cuda_without_cuda_and_unknown_devices_are_one_line(runner, tiny_run, tmp_path):
    for device, needle in (("cuda", "CUDA is not available"), ("banana", "not a device"),
                           ("mps", "cpu or cuda")):
        res = _invoke(runner, "train", "--recipe", "synthetic-attn-regression", "--root",
                      tiny_run.root, "--out", tmp_path / device, "--device", device,
                      "--set", "data.image_size=[64, 64]")
        _one_line_error(res, needle)
        res = _invoke(runner, "eval", "--checkpoint", tiny_run.run, "--device", device)
        _one_line_error(res, needle)


def test_negative_gallery_size_is_a_usage_error_not_a_traceback(runner, tiny_run, tmp_path):
    res = _invoke(runner, "eval", "--checkpoint", tiny_run.run, "--device", "cpu",
                  "--gallery", tmp_path / "g", "--gallery-n", "-3")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "--gallery-n" in res.output
    assert not (tmp_path / "g").exists()


def test_image_size_zero_or_below_the_stride_is_one_line(runner):
    for size, needle in (("[0, 0]", "data.image_size"), ("[8, 8]", "stride 16")):
        res = _invoke(runner, "recipes", "show", "synthetic-attn-regression",
                      "--set", f"data.image_size={size}")
        _one_line_error(res, needle)


def test_a_hidden_size_that_cannot_be_allocated_is_one_line(runner):
    res = _invoke(runner, "recipes", "show", "synthetic-attn-regression",
                  "--set", "model.head.hidden=100000000000")
    _one_line_error(res, "head 'box-regression'", "not enough memory")


# ---------------------------------------------------------------- 9, 12: predict


def test_predict_refuses_a_phrase_without_words(runner, tiny_run, tmp_path):
    image = next((tiny_run.root / "images").glob("*.jpg"))
    for phrase in ("", "   ", " . "):
        res = _invoke(runner, "predict", image, phrase, "--checkpoint", tiny_run.run,
                      "--device", "cpu", "--out", tmp_path / "p.png")
        _one_line_error(res, "has no words")
    assert not (tmp_path / "p.png").exists()


def test_predict_warns_naming_the_words_when_none_is_known(tiny_run, tmp_path):
    from vgkit.api import check_phrase
    from vgkit.engine.train import load_trained
    from vgkit.plugins import get_registry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, *_ = load_trained(tiny_run.run, get_registry())
    with pytest.warns(UserWarning, match=r"zorblax, quux"):
        check_phrase(model, "Zorblax quux")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known word: no warning
        check_phrase(model, "the zorblax circle")


def test_predict_grounds_a_photo_as_the_viewer_sees_it(runner, tiny_run, tmp_path):
    from PIL import Image

    stored = Image.new("RGB", (96, 64), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the viewer rotates the stored pixels by 90 degrees
    photo = tmp_path / "phone.jpg"
    stored.save(photo, exif=exif)
    res = _invoke(runner, "predict", photo, "the red circle", "--checkpoint", tiny_run.run,
                  "--device", "cpu", "--out", tmp_path / "fig.png")
    assert res.exit_code == 0, res.output
    assert "(64x96)" in res.output  # the upright frame, not the stored 96x64
    boxes = [float(v) for v in res.output.split("x1 y1 x2 y2:")[1].split()[:4]]
    assert boxes[2] <= 64 and boxes[3] <= 96


# ---------------------------------------------------------------- 6: invalid records


def test_invalid_records_are_skipped_by_train_and_counted_by_eval(tmp_path, registry, runner,
                                                                  tiny_run):
    """A hand-edited index with a NaN and a zero-width box: train drops, eval counts them."""
    root = tmp_path / "syn"
    shutil.copytree(tiny_run.root, root, ignore=shutil.ignore_patterns("features"))
    lines = (root / "records.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    train_k = next(k for k, r in enumerate(recs) if r["split"] == "train")
    test_k = next(k for k, r in enumerate(recs) if r["split"] == "test")
    recs[train_k]["box"][2] = recs[train_k]["box"][0]  # zero width
    lines[train_k] = json.dumps(recs[train_k])
    lines[test_k] = json.dumps(recs[test_k]).replace(str(recs[test_k]["box"][1]), "NaN", 1)
    (root / "records.jsonl").write_text("\n".join(lines) + "\n")
    recipe = load_recipe("synthetic-attn-regression", [f"data.root={root}", *SMALL],
                         registry=registry)
    with pytest.warns(UserWarning, match=r"dropped invalid record \(degenerate_box\) 1"):
        Trainer(recipe, registry, tmp_path / "run", device="cpu", progress=False).fit()
    res = _invoke(runner, "eval", "--checkpoint", tmp_path / "run", "--device", "cpu")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "eval-test.json").read_text())
    n_test = sum(r["split"] == "test" for r in recs)
    assert summary["n"] == n_test and summary["scored"] == n_test - 1
    assert summary["unscored"] == {"invalid record (nan_box)": 1}
