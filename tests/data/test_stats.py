"""The statistics `vgkit data info` prints, computed by the library."""

from __future__ import annotations

import dataclasses

import pytest

from vgkit.data.index import DatasetIndex, Record
from vgkit.data.stats import (
    expressions,
    length_histogram,
    quantile,
    record_statistics,
    vocab_coverage,
)
from vgkit.text import Vocabulary


def test_length_histogram_and_vocab_coverage():
    assert length_histogram([1, 1, 2, 7, 30]) == [("1", 2), ("2", 1), ("3", 0), ("4", 0),
                                                  ("5", 0), ("6-10", 1), ("11-20", 0),
                                                  ("21+", 1)]
    voc = Vocabulary(["a"])

    class R:
        tokens = ("a", "b", "a")

    cov = vocab_coverage([R()], voc)  # type: ignore[list-item]
    assert cov["token_share"] == pytest.approx(2 / 3) and cov["type_share"] == 0.5
    assert cov["top_unknown"] == [("b", 1)]


def _rec(split: str, sent: int, phrase: str, box: tuple[float, float, float, float],
         size: tuple[int, int] = (100, 100)) -> Record:
    return Record(image_id="i", image_path="i.jpg", width=size[0], height=size[1], box=box,
                  phrase=phrase, tokens=tuple(phrase.split()), split=split, ref_id="r",
                  sent_id=sent)


def test_record_statistics_lengths_areas_and_sizeless_records():
    recs = [_rec("train", 0, "a b", (0, 0, 10, 10)), _rec("train", 1, "a b c d", (0, 0, 50, 50)),
            _rec("train", 2, "a", (0, 0, 100, 100), size=(0, 0))]
    st = record_statistics(recs, Vocabulary(["a", "b"]))
    assert st["length"]["mean"] == pytest.approx(7 / 3) and st["length"]["max"] == 4
    assert st["length"]["median"] == 2
    assert st["no_size"] == 1  # the record with no image size has no relative area
    assert st["area_quantiles"][0.0] == pytest.approx(0.01)
    assert st["area_quantiles"][1.0] == pytest.approx(0.25)
    assert st["coverage"]["tokens"] == 7 and st["coverage"]["top_unknown"][0] == ("c", 1)
    assert "coverage" not in record_statistics(recs)
    assert quantile([1.0, 2.0, 3.0], 0.5) == 2.0


def test_expressions_counts_each_expression_once_across_trainval():
    a, b = _rec("train", 0, "a", (0, 0, 1, 1)), _rec("val", 1, "b", (0, 0, 1, 1))
    tv = [dataclasses.replace(r, split="trainval") for r in (a, b)]
    index = DatasetIndex([a, b, *tv], name="t")
    assert len(expressions(index, None)) == 2
    assert [r.phrase for r in expressions(index, "val")] == ["b"]
