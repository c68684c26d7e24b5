"""``vgkit search``: the space recipes declare (Table 1's), deterministic sampling in range, resumable tiny searches."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from vgkit.cli import app
from vgkit.data.synth import generate
from vgkit.engine.search import Search, ranked, sample, searched, trial_overrides
from vgkit.recipe import has_path, load_recipe
from vgkit.registry import Registry

TINY = ["data.image_size=[64, 64]", "train.workers=0", "train.batch_size=10",
        "model.text_encoder.hidden=16", "model.text_encoder.embedding_dim=16"]
# Table 1 of Endo et al., written out again: (label, low, high, final value)
TABLE_1 = {"LSTM layers": (1, 3, 1), "Hidden size of image attention model": (100, 800, 750),
           "Layers of image attention model": (1, 3, 3),
           "Hidden size of text attention model": (100, 500, 500),
           "Layers of text attention model": (1, 3, 1),
           "Hidden size of region prediction model": (100, 500, 450),
           "Layers of region prediction model": (1, 3, 2), "Dropout": (0.5, 0.8, 0.6)}


def _space(registry: Registry, name: str = "refit-attn-regression"):
    return load_recipe(name, registry=registry).search


def test_space_is_table_1_and_its_keys_hold_the_final_values(registry):
    SPACE = _space(registry)
    assert {r.label: (r.low, r.high, r.chosen) for r in SPACE} == TABLE_1
    full = load_recipe("refit-attn-regression", registry=registry).resolved(registry)
    for r in SPACE:
        for key in r.keys:
            assert has_path(full, key), key
            node = full
            for part in key.split("."):
                node = (next(x for x in node if x["name"] == part) if isinstance(node, list)
                        else node[part])
            assert node == r.chosen, (key, node)
        if "Hidden" in r.label:
            assert r.step == 50


def test_variants_inherit_the_space_and_a_second_plugin_set_declares_its_own(registry):
    full = _space(registry)
    for name in ("refit-no-text-attention", "refit-no-attention", "referit-blind",
                 "synthetic-attn-regression"):
        assert _space(registry, name) == full, name
    tvg = load_recipe("transvg-lite", registry=registry)
    resolved = tvg.resolved(registry)
    assert [r.short for r in searched(resolved, tvg.search)] == ["layers", "d", "MLP h"]


def test_sampling_is_in_range_on_the_step_and_deterministic(registry):
    SPACE = _space(registry)
    draws = [sample(0, k, SPACE) for k in range(1, 301)]
    for r in SPACE:
        got = [d[r.label] for d in draws]
        assert all(r.low <= v <= r.high for v in got), r.label
        assert all(abs((v - r.low) / r.step - round((v - r.low) / r.step)) < 1e-6 for v in got)
        assert min(got) == r.low and max(got) == r.high  # both ends reachable
    assert draws == [sample(0, k, SPACE) for k in range(1, 301)]
    assert draws != [sample(1, k, SPACE) for k in range(1, 301)]
    assert sample(0, 7, SPACE) == sample(0, 7, SPACE) != sample(0, 8, SPACE)


def test_only_keys_the_recipe_has_are_sampled(registry):
    SPACE = _space(registry)
    values = sample(3, 1, SPACE)
    for name, absent in [("refit-no-text-attention", "text-attention"),
                         ("refit-no-attention", "attention"), ("referit-blind", "attention")]:
        resolved = load_recipe(name, registry=registry).resolved(registry)
        keys = trial_overrides(resolved, values, SPACE)
        assert keys and not [k for k in keys if absent in k], (name, keys)
        assert "model.head.hidden" in keys
        load_recipe(name, [f"{k}={v}" for k, v in keys.items()], registry=registry)  # validates
    no_ta = load_recipe("refit-no-text-attention", registry=registry).resolved(registry)
    assert [r.short for r in searched(no_ta, SPACE)] == [
        "LSTM L", "IA h", "IA L", "RP h", "RP L", "dropout"]


def test_ranked_is_best_first():
    rows = [{"trial": 1, "val_acc@0.5": 0.2}, {"trial": 2, "val_acc@0.5": 0.5},
            {"trial": 3, "val_acc@0.5": 0.2}]
    assert [r["trial"] for r in ranked(rows)] == [2, 1, 3]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("syn-search")
    generate(r, 16, seed=5, image_size=(96, 80), progress=False)
    return r


def _search(runner, root: Path, out: Path, trials: int):
    args = ["search", "-r", "synthetic-attn-regression", "--trials", str(trials), "--seed", "4",
            "--out", str(out), "--epochs", "2", "--quiet", "--device", "cpu",
            "--set", f"data.root={root}"]
    for s in TINY:
        args += ["--set", s]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return runner.invoke(app, args)


def _val_epochs(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["epoch"] for r in map(json.loads, lines) if r["event"] == "val"]


def test_search_resumes_skipping_finished_trials(runner, root, tmp_path, monkeypatch, registry):
    out = tmp_path / "search"
    res = _search(runner, root, out, 1)
    assert res.exit_code == 0, res.output
    first = (out / "trial-001" / "metrics.jsonl").read_text()
    assert len((out / "trials.jsonl").read_text().splitlines()) == 1

    # interrupt trial 2 after its first epoch, the way Ctrl-C would
    from vgkit.engine.train import Trainer

    validate = Trainer._validate

    def interrupted(self, log):
        validate(self, log)
        if self.out.name == "trial-002" and self.state.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_validate", interrupted)
    res = _search(runner, root, out, 3)
    assert res.exit_code == 130 and "interrupted" in res.output
    monkeypatch.setattr(Trainer, "_validate", validate)

    res = _search(runner, root, out, 3)
    assert res.exit_code == 0, res.output
    assert "trial 1/3" not in res.output and "trial 2/3 resuming" in res.output
    assert (out / "trial-001" / "metrics.jsonl").read_text() == first  # not re-run
    assert _val_epochs(out / "trial-002") == [1, 2]  # resumed, not restarted
    rows = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    assert [r["trial"] for r in rows] == [1, 2, 3] and rows[1]["resumed"]

    summary = json.loads((out / "search.json").read_text())
    accs = [t["val_acc@0.5"] for t in summary["trials"]]
    assert accs == sorted(accs, reverse=True) and len(accs) == 3
    # the printed table is in the same order
    table = res.output[res.output.index("trials by best validation"):]
    printed = [int(m) for m in re.findall(r"^\s*(\d+)\s+\d+\.\d+%", table, re.M)]
    assert printed == [t["trial"] for t in summary["trials"]]
    # each trial trained with its own sampled values
    s = Search("synthetic-attn-regression", out, seed=4, sets=(f"data.root={root}", *TINY),
               epochs=2)
    for t in rows:
        recipe, keys = s.trial_recipe(t["trial"], registry)
        assert keys == t["set"]
        assert recipe.model.head.options()["hidden"] == keys["model.head.hidden"]
    assert len({json.dumps(t["set"], sort_keys=True) for t in rows}) == 3


def test_a_search_with_other_settings_is_refused(runner, root, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "search.json").write_text(json.dumps({"settings": {
        "recipe": "synthetic-attn-regression", "seed": 9, "set": [], "epochs": 2}}))
    res = _search(runner, root, out, 1)
    assert res.exit_code == 2 and "seed = 9" in res.output
