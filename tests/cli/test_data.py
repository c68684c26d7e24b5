"""``vgkit data prepare`` / ``info`` through the Typer sub-app."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from tests.data.referit_forms import write_hu, write_tiny_hu
from vgkit.cli.data import app
from vgkit.data.index import DatasetIndex
from vgkit.data.stats import vocab_coverage
from vgkit.text import Vocabulary

runner = CliRunner()


def invoke(*args: str):
    """Run the sub-app as a user would."""
    return runner.invoke(app, [str(a) for a in args])


def _failed(res, text: str) -> bool:
    """A user error: exit status 2 and a one-line message containing `text`."""
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    return res.exit_code == 2 and len(lines) == 1 and text in " ".join(res.output.split())


def test_prepare_tiny_reports_counts_and_missing_images(tmp_path):
    root = write_tiny_hu(tmp_path / "referit")
    (root / "images").mkdir()
    (root / "images" / "1.jpg").write_bytes(b"")  # present; 2, 3, 4 are not
    res = invoke("prepare", "referit", "--root", root, "--out", tmp_path / "idx")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "hu form" in out and "trainval" in out
    assert "missing images: 3 of 4" in out and "images/2.jpg" in out
    assert "problems: none" in out
    ix = DatasetIndex.load(tmp_path / "idx")
    assert ix.splits() == {"test": 3, "train": 4, "trainval": 5, "val": 1}
    assert ix.meta["missing_images"]["count"] == 3


def test_prepare_default_out_and_read_only(tmp_path):
    root = write_tiny_hu(tmp_path / "referit")
    assert invoke("prepare", "referit", "--root", root).exit_code == 0
    assert (root / "vgkit-index" / "manifest.json").is_file()
    mode = root.stat().st_mode
    root.chmod(0o555)
    try:
        res = invoke("prepare", "referit", "--root", root)
    finally:
        root.chmod(mode)
    assert _failed(res, "--out")


def test_prepare_errors(tmp_path):
    res = invoke("prepare", "refcocoplus", "--root", tmp_path)
    assert _failed(res, "unknown dataset 'refcocoplus'") and "refcoco+" in res.output
    res = invoke("prepare", "referit", "--root", tmp_path / "nope")
    assert _failed(res, "not a directory")
    res = invoke("prepare", "referit", "--root", tmp_path, "--out", tmp_path / "idx")
    assert _failed(res, "looked in")


def test_prepare_problems_and_strict(tmp_path):
    root = write_hu(tmp_path / "r", {"train": {"1_1": ["ok"], "1_2": ["sticks out"]}},
                    {"1_1": [0, 0, 9, 9], "1_2": [5, 5, 200, 20]}, {"1": [100, 80]})
    res = invoke("prepare", "referit", "--root", root, "--out", tmp_path / "idx")
    assert _failed(res, "no ReferIt split 'val'")
    res = invoke("prepare", "referit", "--root", root, "--out", tmp_path / "idx", "--splits", "train")
    assert res.exit_code == 0, res.output
    assert "box_clipped 1" in res.output
    res = invoke("prepare", "referit", "--root", root, "--out", tmp_path / "idx", "--splits",
                 "train", "--strict")
    assert _failed(res, "box_clipped")
    res = invoke("prepare", "referit", "--root", root, "--out", tmp_path / "i", "--format", "pth")
    assert _failed(res, "pth")


def test_info_tiny(tmp_path):
    root = write_tiny_hu(tmp_path / "referit")
    assert invoke("prepare", "referit", "--root", root, "--out", tmp_path / "idx").exit_code == 0
    vocab = tmp_path / "vocab.txt"
    Vocabulary(["<pad>", "<go>", "<eos>", "<unk>", "the", "car", "sky"]).save(vocab)
    res = invoke("info", tmp_path / "idx", "--vocab", vocab)
    assert res.exit_code == 0, res.output
    # 8 expressions once each (trainval repeats train + val): 15 tokens, of which
    # "the" x3, "car" x2 and "sky" x1 are in the vocabulary.
    assert "13 records" in res.output and "all expressions, each once" in res.output
    assert "max 4" in res.output and "covers 40.00% of 15 tokens" in res.output
    assert "box area / image area" in res.output
    res = invoke("info", tmp_path / "idx", "--split", "val")
    assert res.exit_code == 0 and "split val" in res.output and "max 4" in res.output
    res = invoke("info", tmp_path / "idx", "--split", "testB")
    assert _failed(res, "testB")
    res = invoke("info", tmp_path)
    assert _failed(res, "not a vgkit index")
    res = invoke("info", tmp_path / "idx", "--vocab", tmp_path / "none.txt")
    assert _failed(res, "vocabulary file not found")


def test_real_prepare_and_info(real_dir, tmp_path):
    # The val split only: the full counts are checked in test_referit, and writing and
    # hashing 180k records twice would cost most of the test budget.
    out = tmp_path / "idx"
    res = invoke("prepare", "referit", "--root", real_dir, "--out", out, "--splits", "val")
    assert res.exit_code == 0, res.output
    assert "5,842" in res.output and "1,000" in res.output
    assert "missing images: none of the 1,000" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 5_842 and manifest["source"] == "hu"
    res = invoke("info", out, "--vocab", real_dir / "vocabulary_referit.txt")
    assert res.exit_code == 0, res.output
    voc = Vocabulary.from_file(real_dir / "vocabulary_referit.txt")
    cov = vocab_coverage(DatasetIndex.load(out).records, voc)
    assert 0.95 < cov["token_share"] < 1
    assert f"covers {cov['token_share']:.2%} of {cov['tokens']:,} tokens" in res.output


LAZY = """
import sys
sys.argv = ["vgkit", *sys.argv[1:]]
from vgkit.cli import main
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
print("torch" in sys.modules, "vgkit.cli.train" in sys.modules)
"""


def test_the_data_commands_load_neither_torch_nor_the_other_commands(tmp_path):
    # `vgkit data prepare` on a big dataset should hold the records, not torch (~450 MB)
    data = tmp_path / "syn"
    out = subprocess.run([sys.executable, "-c", LAZY, "data", "synth", "--out", str(data),
                          "--n-images", "10"], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["False", "False"], out.stdout
    out = subprocess.run([sys.executable, "-c", LAZY, "--help"], capture_output=True, text=True,
                         check=True)
    assert "train" in out.stdout and "data" in out.stdout  # no command named: all are listed


def test_the_library_app_has_every_command():
    from vgkit.cli import app

    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert {"train", "eval", "bench", "predict", "serve", "export", "plugins", "search",
            "recipes", "data", "features", "weights"} <= names
