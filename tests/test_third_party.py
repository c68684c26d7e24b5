"""Third-party plugins: the example packages installed for real, and PluginHost unit tests.

The examples are pip-installed (offline, from their source folders) into a
temporary target once per module; the CLI then runs in a subprocess with that
target on PYTHONPATH, so plugins are found through their dist-info entry points
exactly as for a user who ran ``pip install vgkit-giou``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vgkit.hookspecs import hookimpl
from vgkit.plugins import PluginHost, PluginLoadError
from vgkit.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("vgkit-giou", "vgkit-broken", "vgkit-clash")


# ---------------------------------------------------------------- installed for real


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pip --target directory holding the three example distributions."""
    tmp = tmp_path_factory.mktemp("third_party")
    # build from copies: an in-tree build leaves build/ and *.egg-info behind, and an
    # egg-info next to the sources would make the example visible to every later test
    sources = [shutil.copytree(ROOT / "examples" / name, tmp / "src" / name) for name in EXAMPLES]
    target = tmp / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
           "--no-index", "--disable-pip-version-check", "--target", str(target),
           *map(str, sources)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return target


def run_vgkit(site: Path, *args: str, env: dict[str, str] | None = None,
              code: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m vgkit ARGS`` (or ``python -c CODE``) with `site` on PYTHONPATH."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("VGKIT_")}
    # wide and plain, so rich neither wraps nor truncates what the asserts look for
    base.update(PYTHONPATH=str(site), COLUMNS="400", NO_COLOR="1", TERM="dumb")
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "vgkit", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**base, **(env or {})})


def rows(output: str) -> dict[str, str]:
    """The first line of each plugin's row in `vgkit plugins`, by plugin name."""
    found = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) >= 4 and cells[0] and cells[0] != "plugin":
            found[cells[0]] = " | ".join(cells)
    return found


@pytest.fixture(scope="module")
def listed(site: Path) -> subprocess.CompletedProcess[str]:
    """`vgkit plugins` with every example installed (run once, read by several tests)."""
    return run_vgkit(site, "plugins")


def test_plugins_lists_distribution_version_and_errors(listed: subprocess.CompletedProcess[str]):
    done = listed
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    assert "endo2017 | vgkit |" in table["endo2017"] and "| ok |" in table["endo2017"]
    assert table["giou"].startswith("giou | vgkit-giou | 0.1.0 | ok")
    assert table["broken"].startswith("broken | vgkit-broken | 0.1.0 | error")
    assert "ModuleNotFoundError" in done.stdout and "roi_align_cuda_ext" in done.stdout
    # what giou registered is listed with it
    assert "loss: giou" in done.stdout and "backbone: tiny-cnn" in done.stdout


def test_clash_error_names_both_plugins_and_rolls_back(listed: subprocess.CompletedProcess[str]):
    done = listed
    assert table_status(done.stdout, "iou-fork") == "error"
    assert ("loss 'iou-se-area' is registered by both plugin 'endo2017' and plugin 'iou-fork'"
            in done.stdout)
    assert "l1-fork" not in done.stdout  # registered before the clash, then removed


def table_status(output: str, plugin: str) -> str:
    """The status cell of `plugin`'s row."""
    return rows(output)[plugin].split(" | ")[3]


def test_recipe_from_a_third_party_plugin_shows(site: Path):
    done = run_vgkit(site, "recipes", "show", "tiny-giou")
    assert done.returncode == 0, done.stderr
    assert "name: tiny-cnn" in done.stdout and "name: giou" in done.stdout
    assert "l1: 1.0" in done.stdout  # the giou options model filled in


def test_model_from_a_third_party_recipe_trains_a_step(site: Path):
    code = textwrap.dedent("""
        import json, torch
        from vgkit.model import build_model, compute_loss
        from vgkit.plugins import get_host
        from vgkit.recipe import load_recipe

        host = get_host()
        recipe = load_recipe("tiny-giou", registry=host.registry)
        torch.manual_seed(0)
        model, loss = build_model(recipe, host.registry)
        text = model.tokenize(["the red circle", "a small blue square on the left"])
        out = model(text, images=torch.randn(2, 3, 64, 64))
        target = torch.tensor([[4.0, 8.0, 40.0, 36.0], [20.0, 10.0, 60.0, 50.0]])
        result = compute_loss(loss, out, target, model.head.box_format, recipe.data.image_size)
        result.total.backward()
        params = [p for p in model.backbone.parameters() if p.requires_grad]
        print(json.dumps({
            "loss": result.total.item(), "terms": sorted(result.terms),
            "backbone": type(model.backbone).__name__, "loss_type": type(loss).__name__,
            "backbone_grads": bool(params) and all(p.grad is not None for p in params),
            "plugins": {p.name: p.status for p in host.plugins},
        }))
    """)
    done = run_vgkit(site, code=code)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["backbone"] == "TinyCNN" and got["loss_type"] == "GiouLoss"
    assert got["terms"] == ["L_GIoU", "L_L1"] and 0 < got["loss"] < 10
    assert got["backbone_grads"], "tiny-cnn is trainable: the loss must reach it"
    # other plugins may be installed too; the examples and the reference set must be as expected
    assert got["plugins"].items() >= {"broken": "error", "endo2017": "ok", "giou": "ok",
                                      "iou-fork": "error"}.items()


def test_strict_mode_fails_with_one_line_naming_the_plugin(site: Path):
    done = run_vgkit(site, "plugins", env={"VGKIT_STRICT_PLUGINS": "1"})
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:") and "'broken'" in lines[0]
    assert "vgkit-broken" in lines[0] and "roi_align_cuda_ext" in lines[0]
    assert "Traceback" not in done.stderr


def test_disable_the_failing_plugins(site: Path):
    # strict too: with the failures disabled it has nothing left to complain about
    done = run_vgkit(site, "plugins", env={"VGKIT_DISABLE_PLUGINS": "broken, iou-fork",
                                           "VGKIT_STRICT_PLUGINS": "1"})
    assert done.returncode == 0, done.stderr
    assert table_status(done.stdout, "broken") == "disabled"
    assert table_status(done.stdout, "iou-fork") == "disabled"
    assert table_status(done.stdout, "giou") == "ok"
    assert "ModuleNotFoundError" not in done.stdout


def test_disable_all_plugins_loads_nothing(site: Path):
    done = run_vgkit(site, "plugins", env={"VGKIT_DISABLE_PLUGINS": "*"})
    assert done.returncode == 0, done.stderr
    statuses = {name: table_status(done.stdout, name) for name in rows(done.stdout)}
    assert {"broken", "endo2017", "giou", "iou-fork"} <= set(statuses)
    assert set(statuses.values()) == {"disabled"}
    shown = run_vgkit(site, "recipes", "show", "tiny-giou", env={"VGKIT_DISABLE_PLUGINS": "*"})
    assert shown.returncode == 2 and "unknown recipe 'tiny-giou'" in shown.stderr


def test_giou_matches_torchvision():
    torchvision_ops = pytest.importorskip("torchvision.ops")
    sys.path.insert(0, str(ROOT / "examples" / "vgkit-giou"))
    try:
        from vgkit_giou import generalized_iou
    finally:
        sys.path.pop(0)
    a, b = torch.rand(2, 64, 4).mul(50).sort(-1).values.unbind(0)  # x1<=y1<=x2<=y2: valid boxes
    expected = 1 - torchvision_ops.generalized_box_iou_loss(a, b, reduction="none")
    torch.testing.assert_close(generalized_iou(a, b, eps=0), expected)
    assert generalized_iou(a[:1], a[:1] + 100).item() < 0  # disjoint boxes: negative


# ---------------------------------------------------------------- PluginHost, in process


def _loss(opts: object, *, spec: object) -> object:
    return None


class Good:
    """Registers one loss."""

    @hookimpl
    def vgkit_register(self, registry: Registry) -> None:
        registry.add("loss", "good-loss", _loss)


class HalfThenRaise:
    """Registers two components, then fails."""

    @hookimpl
    def vgkit_register(self, registry: Registry) -> None:
        registry.add("loss", "half-a", _loss)
        registry.add("head", "half-b", _loss)
        raise RuntimeError("GPU kernel missing")


class SameLoss:
    """Registers the name Good already owns."""

    @hookimpl
    def vgkit_register(self, registry: Registry) -> None:
        registry.add("loss", "extra-loss", _loss)
        registry.add("loss", "good-loss", _loss)


class NoHook:
    """Has a method that looks like a hook but is not marked."""

    def vgkit_register(self, registry: Registry) -> None:
        registry.add("loss", "never", _loss)


class MisspeltHook:
    """A hookimpl whose name matches no hookspec."""

    @hookimpl
    def vgkit_regster(self, registry: Registry) -> None:
        registry.add("loss", "never", _loss)


class WrongArgument:
    """A hookimpl that asks for an argument the hookspec does not give."""

    @hookimpl
    def vgkit_register(self, reg: Registry) -> None:
        reg.add("loss", "never", _loss)


def _names(host: PluginHost) -> set[tuple[str, str]]:
    return {(c.kind, c.name) for c in host.registry.components()}


def test_partial_registration_is_rolled_back():
    host = PluginHost(strict=False)
    host.register(Good(), "good")
    info = host.register(HalfThenRaise(), "half")
    assert info.status == "error" and info.error == "RuntimeError: GPU kernel missing"
    assert info.registered == []
    assert _names(host) == {("loss", "good-loss")}
    assert not host.pm.has_plugin("half")  # its hooks must not run again later


def test_duplicate_component_names_both_plugins_and_keeps_the_first():
    host = PluginHost(strict=False)
    host.register(Good(), "good")
    info = host.register(SameLoss(), "same")
    assert info.status == "error"
    assert "'good'" in info.error and "'same'" in info.error and "good-loss" in info.error
    assert host.registry.get("loss", "good-loss").plugin == "good"
    assert ("loss", "extra-loss") not in _names(host)


def test_duplicate_plugin_name_is_an_error():
    host = PluginHost(strict=False)
    host.register(Good(), "good")
    info = host.register(Good(), "good")
    assert info.status == "error" and "already taken" in info.error
    assert host.registry.get("loss", "good-loss").plugin == "good"  # the first stays intact


@pytest.mark.parametrize("plugin", [NoHook(), MisspeltHook()], ids=["unmarked", "misspelt"])
def test_plugin_implementing_no_hook_is_an_error(plugin: object):
    host = PluginHost(strict=False)
    info = host.register(plugin, "empty")
    assert info.status == "error" and "implements no vgkit hook" in info.error
    assert _names(host) == set() and not host.pm.has_plugin("empty")


def test_hookimpl_with_wrong_argument_name_fails_validation():
    host = PluginHost(strict=False)
    info = host.register(WrongArgument(), "wrong")
    assert info.status == "error" and info.error.startswith("PluginValidationError")
    assert "reg" in info.error and "vgkit_register" in info.error
    assert _names(host) == set()
    host.register(Good(), "good")  # the host is still usable
    assert _names(host) == {("loss", "good-loss")}


def test_strict_host_raises_naming_the_plugin_and_still_rolls_back():
    host = PluginHost(strict=True)
    with pytest.raises(PluginLoadError, match=r"plugin 'half' \(<local>\) failed: RuntimeError"):
        host.register(HalfThenRaise(), "half")
    assert _names(host) == set()


def test_disabled_set_skips_entry_points_without_importing():
    host = PluginHost(strict=True)  # an import would raise if anything failed
    host.load_entry_points(disabled={"*"})
    assert host.plugins and all(p.status == "disabled" for p in host.plugins)
    assert _names(host) == set()
