"""Words outside the vocabulary are said where the text encoder reads that vocabulary only."""

from __future__ import annotations

import warnings

import pytest

from vgkit.data.synth import generate
from vgkit.engine.bundle import DataBundle
from vgkit.recipe import load_recipe


@pytest.mark.parametrize("reads_vocab", [True, False])
def test_out_of_vocabulary_phrases_are_warned_only_for_a_vocabulary_reader(registry, tmp_path,
                                                                           reads_vocab):
    root = tmp_path / "syn"
    generate(root, 10, seed=0, image_size=(96, 80), progress=False)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("<pad>\n<unk>\n<s>\n</s>\nzebra\n")  # no word of any synthetic phrase
    recipe = load_recipe("synthetic-attn-regression", [f"data.root={root}",
                                                       f"data.vocab={vocab}"], registry=registry)
    bundle = DataBundle(recipe, registry, progress=True)
    bundle.reads_vocab = reads_vocab
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n = len(bundle.split("train"))
    said = [str(w.message) for w in caught if "outside the vocabulary" in str(w.message)]
    if reads_vocab:
        assert said and f"{n:,} of {n:,} phrases" in said[0]
    else:
        assert said == []
