"""The image pipeline: resize modes, normalisation, boxes out and back."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vgkit.data.images import BadImageError, ImageTransform, read_image


def _image(w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h), (0, 0, 0))
    img.paste((255, 255, 255), (w // 4, h // 4, w // 2, h // 2))  # a white block
    return img


def test_stretch_maps_boxes_by_independent_scales_and_back():
    tf = ImageTransform((224, 224), "stretch")
    box = torch.tensor([[120.0, 90.0, 240.0, 180.0]])
    w, h = torch.tensor([480]), torch.tensor([360])
    inp = tf.box_to_input(box, w, h)
    assert torch.allclose(inp, torch.tensor([[56.0, 56.0, 112.0, 112.0]]))
    assert torch.allclose(tf.box_to_original(inp, w, h), box, atol=1e-4)


def test_letterbox_keeps_aspect_pads_and_maps_back():
    tf = ImageTransform((224, 224), "letterbox")
    x = tf(_image(480, 240))
    assert x.shape == (3, 224, 224)
    # the pad rows (56 above, 56 below) hold the normalised ImageNet mean: ~0 after normalising
    assert x[:, :50].abs().max() < 0.02 and x[:, -50:].abs().max() < 0.02
    box = torch.tensor([[120.0, 60.0, 240.0, 120.0]])
    w, h = torch.tensor([480]), torch.tensor([240])
    inp = tf.box_to_input(box, w, h)
    assert torch.allclose(inp, torch.tensor([[56.0, 56.0 + 28.0, 112.0, 56.0 + 56.0]]))
    assert torch.allclose(tf.box_to_original(inp, w, h), box, atol=1e-4)


def test_white_block_lands_where_its_box_says():
    tf = ImageTransform((64, 64))
    x = tf(_image(200, 100))
    box = tf.box_to_input(torch.tensor([50.0, 25.0, 100.0, 50.0]), torch.tensor(200), torch.tensor(100))
    x1, y1, x2, y2 = (int(v) for v in box.round())
    assert (x1, y1, x2, y2) == (16, 16, 32, 32)
    white = (1 - 0.485) / 0.229
    assert x[0, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].min() > white - 0.1
    assert x[0, :y1 - 2].max() < 0


def test_predictions_are_clipped_to_the_original_image():
    tf = ImageTransform((224, 224))
    out = tf.box_to_original(torch.tensor([[-10.0, -5.0, 300.0, 230.0]]), torch.tensor([100]),
                             torch.tensor([50]))
    assert out.tolist() == [[0.0, 0.0, 100.0, 50.0]]


def test_bad_images_raise_a_named_error(tmp_path):
    with pytest.raises(BadImageError, match="missing image"):
        read_image(tmp_path / "nope.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(BadImageError, match="cannot decode"):
        read_image(bad)
