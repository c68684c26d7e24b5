"""What ``vgkit eval`` prints beside its headline numbers: phrase-blind baselines and failure buckets."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def baselines(ev: Any, convention: str) -> dict[str, Any]:
    """Whole-image box, best constant box (fit on the training split) and the random-object detector."""
    from vgkit.engine.baselines import (
        WHOLE_IMAGE,
        best_constant_box,
        constant_box_scores,
        phrase_blind_accuracy,
    )

    train_split = ev.recipe.data.train_split
    box = best_constant_box(ev.bundle.split(train_split))
    exprs = ev.preds.exprs
    whole = constant_box_scores(WHOLE_IMAGE, exprs, convention)  # type: ignore[arg-type]
    const = constant_box_scores(box, exprs, convention)  # type: ignore[arg-type]
    return {"whole_image": whole["acc@0.5"], "whole_image_miou": whole["miou"],
            "constant_box": const["acc@0.5"], "constant_box_miou": const["miou"],
            "constant_box_xyxy_fraction": [round(v, 4) for v in box.tolist()],
            "constant_box_fit_on": train_split,
            "phrase_blind": phrase_blind_accuracy(ev.bundle.index, exprs, ev.bundle.root,
                                                  convention)}  # type: ignore[arg-type]


def baselines_table(base: dict[str, Any]) -> Table:
    """The baselines as a rich table."""
    table = Table(title="baselines that ignore the phrase (same split)")
    for col in ("baseline", "Acc@0.5", "mean IoU"):
        table.add_column(col, justify="left" if col == "baseline" else "right")
    table.add_row("whole image (0, 0, 1, 1)", _pct(base["whole_image"]),
                  f"{base['whole_image_miou']:.3f}")
    box = ", ".join(f"{v:.2f}" for v in base["constant_box_xyxy_fraction"])
    table.add_row(f"best constant box ({box}), fit on {base['constant_box_fit_on']}",
                  _pct(base["constant_box"]), f"{base['constant_box_miou']:.3f}")
    table.add_row("perfect detector, random object (expected)", _pct(base["phrase_blind"]), "-")
    return table


def error_analysis(ev: Any, ious: Any) -> tuple[list[str | None], dict[str, Any]]:
    """Each expression's failure bucket (None when right) and the counts (vgkit.engine.errors)."""
    from vgkit.engine.errors import failure_buckets, summarize

    buckets = failure_buckets(ev.preds, ev.bundle.transform, ev.model.spec.grid, ious)
    return buckets, summarize(buckets, ev.preds.alpha_I is not None)


def errors_table(summary: dict[str, Any]) -> Table:
    """Failure counts per bucket, in the order of precedence; n/a without image attention."""
    table = Table(title=f"why the {summary['failures']:,} failures (IoU < 0.5) failed, "
                        "first bucket that applies")
    for col in ("rank", "bucket", "n", "share of failures"):
        table.add_column(col, justify="left" if col == "bucket" else "right")
    for r in summary["buckets"]:
        table.add_row(str(r["rank"]), r["bucket"], "n/a" if r["n"] is None else f"{r['n']:,}",
                      "n/a" if r["share"] is None else _pct(r["share"]))
    return table
