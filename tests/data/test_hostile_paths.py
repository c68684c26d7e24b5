"""Issue #11, class 1: image paths in annotations must not escape the dataset root."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image
from referit_forms import build_pth, build_refer, write_hu, write_tiny_hu
from typer.testing import CliRunner

from vgkit.cli import app
from vgkit.data.images import read_image
from vgkit.data.index import BOX_CONVENTION, DatasetIndex, Record
from vgkit.data.referit import REFS_FILE, load_referit
from vgkit.data.validate import PATH_RULE, UnsafePathError, check_index, image_file, safe_relpath
from vgkit.errors import VgkitError

runner = CliRunner()


def _one_line_error(exc: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for p in (*parts, PATH_RULE):
        assert p in msg, (p, msg)


@pytest.mark.parametrize(("path", "why"), [
    ("/etc/passwd", "absolute"), ("C:\\Windows\\x.jpg", "absolute"), ("C:/x.jpg", "absolute"),
    ("c:x.jpg", "absolute"), ("\\\\server\\share\\x.jpg", "absolute"), ("\\x.jpg", "absolute"),
    ("../x.jpg", "'..'"), ("images/../../x.jpg", "'..'"), ("images\\..\\..\\x.jpg", "'..'"),
    ("a/..", "'..'"), ("", "empty"), ("./", "empty"), ("images/a\0.jpg", "NUL"),
])
def test_safe_relpath_refuses(path, why):
    with pytest.raises(UnsafePathError) as exc:
        safe_relpath(path, "ann.json: crop 'x_1'")
    _one_line_error(exc, "ann.json: crop 'x_1'", repr(path), why)


@pytest.mark.parametrize(("path", "norm"), [
    ("images/1.jpg", "images/1.jpg"), ("images\\sub\\1.jpg", "images/sub/1.jpg"),
    ("./images//1.jpg", "images/1.jpg"), ("images/..hidden.jpg", "images/..hidden.jpg"),
    ("x..y/1.jpg", "x..y/1.jpg"),
])
def test_safe_relpath_keeps_relative_paths(path, norm, tmp_path):
    assert safe_relpath(path, "w") == norm
    assert image_file(tmp_path, path) == tmp_path / norm
    with pytest.raises(UnsafePathError, match="index"):
        image_file(tmp_path, "../" + path)


def _secret(tmp_path):
    """A JPEG outside every dataset root: what an escaping path would read."""
    Image.new("RGB", (77, 33)).save(tmp_path / "secret.jpg")


def test_hu_crop_id_escapes(tmp_path):
    _secret(tmp_path)
    for crop, shown in (("../../secret_1", "'../../secret.jpg'"), ("/etc/passwd_1", "absolute")):
        root = write_hu(tmp_path / "r", {"train": {"1_1": ["ok"], crop: ["the secret"]}},
                        {"1_1": [0, 0, 9, 9], crop: [0, 0, 9, 9]}, {"1": [100, 80]})
        (root / "referit_imsize.json").write_text(json.dumps({"1.jpg": [100, 80]}))
        with pytest.raises(UnsafePathError) as exc:
            load_referit(root, splits=("train",))
        _one_line_error(exc, "referit_query_train.json: crop", repr(crop), shown)


@pytest.mark.parametrize("bad", ["../../../secret.jpg", "/etc/passwd", "00/../../x.jpg"])
def test_refer_file_name_escapes(tmp_path, bad):
    root = build_refer(write_tiny_hu(tmp_path / "hu"), tmp_path / "refer")
    inst_path = root / "refclef" / "instances.json"
    inst = json.loads(inst_path.read_text())
    inst["images"][0]["file_name"] = bad
    inst_path.write_text(json.dumps(inst))
    with pytest.raises(UnsafePathError) as exc:
        load_referit(root)
    _one_line_error(exc, "instances.json: image 1", repr(bad))


def test_refer_refs_directly_in_root(tmp_path):
    # Images sit beside refclef/: with refclef itself as the root they are outside it.
    root = build_refer(write_tiny_hu(tmp_path / "hu"), tmp_path / "refer") / "refclef"
    with pytest.raises(VgkitError, match="pass --root") as exc:
        load_referit(root)
    assert "\n" not in str(exc.value)
    assert len(load_referit(root.parent)) == 13


@pytest.mark.parametrize("bad", ["../secret.jpg", "/tmp/secret.jpg", "C:\\secret.jpg"])
def test_pth_image_file_escapes(tmp_path, bad):
    root = build_pth(write_tiny_hu(tmp_path / "hu"), tmp_path / "pth")
    items = torch.load(root / "referit_train.pth", weights_only=True)
    items[2] = (bad, *items[2][1:])
    torch.save(items, root / "referit_train.pth")
    with pytest.raises(UnsafePathError) as exc:
        load_referit(root, format="pth")
    _one_line_error(exc, "referit_train.pth: item 2", repr(bad))


def _hand_made(d, paths):
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"name": "mine",
                                                 "box_convention": BOX_CONVENTION}))
    (d / "records.jsonl").write_text("".join(
        json.dumps({"image_id": str(i), "image_path": p, "width": 100, "height": 80,
                    "box": [1, 2, 30, 40], "phrase": "a dog", "split": "train"}) + "\n"
        for i, p in enumerate(paths)))
    return d


@pytest.mark.parametrize("bad", ["../../secret.jpg", "/etc/passwd", "img\\..\\..\\x.jpg"])
def test_hand_made_index_escapes(tmp_path, bad):
    d = _hand_made(tmp_path / "idx", ["images/0.jpg", bad])
    with pytest.raises(UnsafePathError) as exc:
        DatasetIndex.load(d)
    _one_line_error(exc, f"{d / 'records.jsonl'}: line 2", repr(bad))
    res = runner.invoke(app, ["data", "info", str(d)])
    assert res.exit_code == 2 and "line 2" in res.output
    assert sum(line.startswith("error:") for line in res.output.splitlines()) == 1


def test_in_memory_index_escapes():
    # A plugin's dataset builds records itself: check_index refuses the path, never skips it.
    rec = Record(image_id="1", image_path="/etc/passwd", width=10, height=10,
                 box=(0, 0, 5, 5), phrase="x", tokens=("x",), split="train")
    with pytest.raises(UnsafePathError, match="record 0"):
        check_index(DatasetIndex([rec], name="plug"))


def test_prepare_refuses_escaping_crop(tmp_path):
    _secret(tmp_path)
    root = write_hu(tmp_path / "r", {"train": {"../../secret_1": ["the secret"]}},
                    {"../../secret_1": [0, 0, 9, 9]}, {})
    res = runner.invoke(app, ["data", "prepare", "referit", "--root", str(root),
                              "--out", str(tmp_path / "idx"), "--splits", "train"])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "referit_query_train.json" in res.output
    assert not (tmp_path / "idx").exists()


def test_symlinked_image_folder_under_root_works(tmp_path):
    # The user's own link (ROOT/images -> /datasets/...) is not an annotation path.
    elsewhere = tmp_path / "datasets" / "referit-images"
    elsewhere.mkdir(parents=True)
    for image, (w, h) in {"1": (100, 80), "2": (50, 50), "3": (64, 48), "4": (40, 30)}.items():
        Image.new("RGB", (w, h), (200, 10, 10)).save(elsewhere / f"{image}.jpg")
    root = write_tiny_hu(tmp_path / "referit")
    os.symlink(elsewhere, root / "images")
    (root / "referit_imsize.json").unlink()  # sizes from the headers, read through the link
    ix = load_referit(root)
    assert {(r.image_id, r.width, r.height) for r in ix} >= {("1", 100, 80), ("4", 40, 30)}
    assert check_index(ix).ok
    for r in ix:
        assert read_image(image_file(root, r.image_path)).size == (r.width, r.height)
    res = runner.invoke(app, ["data", "prepare", "referit", "--root", str(root),
                              "--out", str(tmp_path / "idx")])
    assert res.exit_code == 0, res.output
    assert "images: all 4 found" in res.output
    assert len(DatasetIndex.load(tmp_path / "idx")) == len(ix)


def test_refs_file_name(tmp_path):
    # The refer fixture's own layout (00/images/<id>.jpg) is relative and loads as before.
    root = build_refer(write_tiny_hu(tmp_path / "hu"), tmp_path / "refer")
    assert (root / "refclef" / REFS_FILE).is_file()
    paths = {r.image_path for r in load_referit(root)}
    assert "images/saiapr_tc-12/00/images/1.jpg" in paths
