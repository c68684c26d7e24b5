"""Figure 4 (attention mapped onto the original image) and the HTML gallery."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from vgkit.data.images import ImageTransform
from vgkit.engine.evaluate import gt_boxes
from vgkit.engine.visualize import (
    attention_image,
    figure_for,
    heat_colour,
    infer_grid,
    render_figure,
    write_gallery,
)


def test_heat_colours_run_blue_to_red():
    assert heat_colour(0.0) == (0, 0, 255) and heat_colour(1.0) == (255, 0, 0)


def test_infer_grid():
    assert infer_grid(196, (224, 224)) == (14, 14)
    assert infer_grid(8, (64, 128)) == (2, 4)


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
def test_attention_lands_on_the_original_pixels_it_came_from(mode):
    # a 128 x 64 image into a 64 x 64 input: letterboxed, it fills input rows 16..48 (grid rows 1-2)
    t = ImageTransform((64, 64), mode)
    alpha = torch.zeros(4, 4)
    row = 1 if mode == "letterbox" else 0
    alpha[row, 0] = 1.0
    att = np.asarray(attention_image(alpha.flatten(), (4, 4), t, 128, 64, (128, 64)))
    y, x = np.unravel_index(att.argmax(), att.shape)
    # the hot cell covers original x 0..32, y 0..32 (letterbox) or 0..16 (stretch)
    assert x < 32 and y < (32 if mode == "letterbox" else 16)
    assert att[48:, 64:].max() < 30  # far corner stays cold


def test_figure_without_attention_is_box_only():
    img = Image.new("RGB", (96, 80), "grey")
    full = render_figure(img, "the red circle", [10, 10, 40, 40], gt_box=[12, 12, 42, 42],
                         alpha_I=torch.rand(16), alpha_T=torch.rand(3), grid=(4, 4),
                         transform=ImageTransform((64, 64)), iou=0.8)
    bare = render_figure(img, "the red circle", [10, 10, 40, 40], gt_box=[12, 12, 42, 42])
    assert bare.width < full.width  # no attention panel
    assert (255, 220, 0) in {c for _, c in bare.getcolors(1 << 16)}  # the yellow prediction


def test_figure_for_a_prediction(ev, tmp_path):
    fig = figure_for(ev.preds, 0, ev.bundle, grid=ev.model.spec.grid)
    assert ev.preds.alpha_I is not None and ev.preds.alpha_T is not None
    fig.save(tmp_path / "fig.png")
    assert fig.width > 2 * 360  # image and attention panels side by side


def test_gallery_has_both_sections_and_links_every_png(ev, tmp_path):
    # make half of the predictions exact so the "correct" section is not empty
    boxes = ev.preds.boxes.clone()
    boxes[::2] = gt_boxes(ev.preds.exprs)[::2]
    preds = replace(ev.preds, boxes=boxes)
    page = write_gallery(preds, ev.bundle, tmp_path / "gal", n=6, seed=0,
                         grid=ev.model.spec.grid)
    html = page.read_text()
    pngs = sorted(p.name for p in (tmp_path / "gal").glob("*.png"))
    assert len(pngs) == 6
    assert re.search(r"<h2>correct \(3 shown", html) and re.search(r"<h2>wrong \(3 shown", html)
    for name in pngs:
        assert f'src="{name}"' in html
    assert html.index("<h2>correct") < html.index("correct-") < html.index("<h2>wrong")
    again = write_gallery(preds, ev.bundle, tmp_path / "gal2", n=6, seed=0, grid=ev.model.spec.grid)
    assert again.read_text().replace("gal2", "gal") == html  # seeded sample
