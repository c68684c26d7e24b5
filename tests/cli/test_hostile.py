"""Issue #11 at the front door: literal output, uncut pipes, recipe bytes, archives, bombs.

Each test feeds one hostile input through the command line or the function
behind it and checks for one literal line (or the right result), never a
traceback, swallowed brackets or a truncated line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vgkit.cli import app
from vgkit.data.images import MAX_PIXELS_ENV, BadImageError, read_image
from vgkit.errors import VgkitError
from vgkit.recipe import load_recipe


def _invoke(*args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(app, [str(a) for a in args])


def _vgkit(*args, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real console entry point, its output going to a pipe (not a terminal)."""
    env = {**os.environ, "COLUMNS": "", "TERM": "dumb"}
    env.pop("COLUMNS")
    return subprocess.run([sys.executable, "-m", "vgkit", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


# ---------------------------------------------------------------- 10: literal output


def test_error_messages_keep_their_square_brackets(tmp_path):
    name = tmp_path / "my[red]recipe[/] [x1, y1, x2, y2].toml"
    res = _invoke("recipes", "show", name)
    assert res.exit_code == 2
    assert f"error: recipe file not found: {name}" in res.output


def test_user_data_in_tables_keeps_its_square_brackets(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('extends = "synthetic-attn-regression"\nname = "mine"\n'
                      'description = "boxes as [x1, y1, x2, y2] in [bold]pixels[/]"\n')
    res = _vgkit("recipes", "show", recipe)
    assert res.returncode == 0, res.stderr
    assert "description: boxes as [x1, y1, x2, y2] in [bold]pixels[/]" in res.stdout


def test_warnings_keep_their_square_brackets(capsys):
    from vgkit.cli import _show_warning  # what the CLI installs as warnings.showwarning

    _show_warning("size must be [h, w] not [red]x[/]", UserWarning)
    assert "warning: size must be [h, w] not [red]x[/]" in capsys.readouterr().err


def test_piped_output_is_never_cut_at_80_columns(tmp_path):
    long = "a description that runs well past eighty columns " * 3
    recipe = tmp_path / "long.toml"
    recipe.write_text(f'extends = "synthetic-attn-regression"\nname = "long"\n'
                      f'description = "{long.strip()}"\n')
    res = _vgkit("recipes", "show", recipe)
    assert res.returncode == 0, res.stderr
    assert f"description: {long.strip()}" in res.stdout.splitlines()
    # the parameter table prints whole too
    assert "total" in res.stdout and "…" not in res.stdout


# ---------------------------------------------------------------- 8: recipe bytes


def test_a_recipe_with_non_utf8_bytes_is_one_line(tmp_path):
    recipe = tmp_path / "latin1.toml"
    recipe.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(VgkitError, match=r"not UTF-8 text \(byte 0xe9 on line 1\)"):
        load_recipe(str(recipe))
    res = _invoke("recipes", "show", recipe)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "not UTF-8 text" in res.output


# ---------------------------------------------------------------- 11: FILE.zip::member


def test_embeddings_named_as_a_zip_member_are_found(tmp_path, registry):
    from vgkit.engine.bundle import DataBundle

    root = tmp_path / "syn"
    from vgkit.data.synth import generate

    index = generate(root, 10, seed=0, image_size=(96, 80), progress=False)
    words = sorted({t for r in index for t in r.tokens})
    archive = root / "glove.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("glove.a.3d.txt", "".join(f"{w} 1 2 3\n" for w in words))
        z.writestr("glove.b.3d.txt", "".join(f"{w} 4 5 6\n" for w in words))
    recipe = load_recipe("synthetic-attn-regression",
                         [f"data.root={root}", "data.embeddings=glove.zip::glove.b.3d.txt",
                          "model.text_encoder.embedding_dim=3"], registry=registry)
    bundle = DataBundle(recipe, registry, progress=False)
    weights = bundle.embeddings(3)
    assert weights[bundle.vocab.stoi[words[0]]].tolist() == [4.0, 5.0, 6.0]
    missing = load_recipe("synthetic-attn-regression",
                          [f"data.root={root}", "data.embeddings=nope.zip::glove.b.3d.txt"],
                          registry=registry)
    with pytest.raises(VgkitError, match=r"data.embeddings: file 'nope.zip' not found"):
        DataBundle(missing, registry, progress=False).embeddings(3)


def test_a_non_finite_word_vector_names_the_file_and_line(tmp_path):
    from vgkit.data.embeddings import load_embeddings
    from vgkit.text import Vocabulary

    glove = tmp_path / "g.txt"
    glove.write_text("cat 1 2 3\ndog nan 1 2\n")
    with pytest.raises(VgkitError, match=r"g\.txt:2: the vector of 'dog' has a non-finite"):
        load_embeddings(glove, Vocabulary(["cat", "dog"]), cache=False, progress=False)


# ---------------------------------------------------------------- 8: decompression bombs


def test_a_decompression_bomb_is_refused_with_its_pixel_count(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (14_000, 14_000)).save(bomb)  # 196 M pixels in a few hundred kB
    assert bomb.stat().st_size < 2_000_000
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    with pytest.raises(BadImageError, match=r"14000x14000 = 196,000,000 pixels .* limit of "
                                             r"89,478,485"):
        read_image(bomb)
    res = _invoke("predict", bomb, "the cat", "--checkpoint", tmp_path / "no-run")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "196,000,000 pixels" in res.output and MAX_PIXELS_ENV in res.output


def test_the_pixel_limit_can_be_raised_or_lowered(tmp_path, monkeypatch):
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(small)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(BadImageError, match=r"1,200 pixels is over the limit of 1,000"):
        read_image(small)
    monkeypatch.setenv(MAX_PIXELS_ENV, "0")  # no limit
    assert read_image(small).size == (40, 30)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(VgkitError, match=r"VGKIT_MAX_IMAGE_PIXELS='lots'"):
        read_image(small)


# ---------------------------------------------------------------- 12: EXIF orientation


def test_datasets_keep_the_stored_frame_and_predict_applies_exif(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to view
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (60, 20), (0, 0, 255)).save(path, exif=exif)
    assert read_image(path).size == (60, 20)  # the frame the annotations were drawn in
    assert read_image(path, upright=True).size == (20, 60)  # as a viewer shows it
