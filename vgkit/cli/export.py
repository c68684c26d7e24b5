"""``vgkit export``: a trained run as ONNX files, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import typer

from vgkit.cli.common import console, styled, user_errors
from vgkit.errors import VgkitError


@user_errors
def export(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run directory (or checkpoint file)."),
    fmt: str = typer.Option("onnx", "--format", help="Export format: onnx."),
    out: Path = typer.Option(..., "--out", help="The model file, e.g. model.onnx; the heads "
                                                "(model.heads.onnx) and model.json go beside it."),
    which: str = typer.Option("best", "--which", help="best or last checkpoint."),
    samples: int = typer.Option(8, "--samples", min=1,
                                help="Dataset images the parity check grounds."),
) -> None:
    """Export the whole model and the heads to ONNX; check them against PyTorch on real images."""
    from vgkit.api import load
    from vgkit.engine.rundir import check_which
    from vgkit.export import PARITY_PX, export_onnx, paths

    if fmt != "onnx":
        raise VgkitError(f"--format {fmt!r}: choose onnx")
    check_which(which)
    paths(out)  # a bad --out before the model is loaded
    g = load(checkpoint, which=which, device="cpu")
    r = export_onnx(g, out, samples=samples)
    console.print(f"model -> {r.model}  (images [B, 3, H, W] + ids + mask -> boxes)")
    console.print(f"heads -> {r.heads}  (features [B, C, h, w] + ids + mask -> boxes)")
    console.print(f"vocabulary and preprocessing -> {r.meta}")
    if r.tokenizer is not None:
        console.print(f"Hugging Face tokenizer -> {r.tokenizer}")
    console.print(f"parity on {r.samples} dataset images with their phrases, onnxruntime vs "
                  "PyTorch (fp32, CPU), largest box difference in original pixels:")
    console.print(f"  whole model: {r.box_px:.6f} px   heads from maps: {r.heads_box_px:.6f} px")
    if r.attention is not None:
        console.print(f"  attention map: {r.attention:.2e}")
    if r.word_attention is not None:
        console.print(f"  word weights: {r.word_attention:.2e}")
    if not r.passed:
        raise VgkitError(f"parity check failed: {max(r.box_px, r.heads_box_px):.6f} px is over "
                         f"{PARITY_PX} px; the files are written but do not match PyTorch")
    console.print(styled("parity ok", "green", f": within {PARITY_PX} px"))
