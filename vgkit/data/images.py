"""The image pipeline: read, resize to the network input, normalise; boxes follow.

``stretch`` is the paper's: every image is resized to 224 x 224 regardless of
aspect. ``letterbox`` keeps the aspect and pads (for later methods). Boxes are
mapped into input pixels with the image and predictions mapped back to
original pixels for evaluation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BadImageError(Exception):
    """An image file that is missing or cannot be decoded."""


@dataclass(frozen=True)
class ImageTransform:
    """Resize to ``size`` = (H, W) by ``mode`` and normalise with ImageNet statistics."""

    size: tuple[int, int] = (224, 224)
    mode: Literal["stretch", "letterbox"] = "stretch"

    def describe(self) -> dict[str, object]:
        """What the feature-cache manifest records about this transform."""
        return {"size": list(self.size), "mode": self.mode, "mean": IMAGENET_MEAN,
                "std": IMAGENET_STD, "interpolation": "bilinear"}

    def geometry(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(sx, sy, ox, oy): input = original * s + o, per axis."""
        H, W = self.size
        if self.mode == "stretch":
            return W / width, H / height, 0.0, 0.0
        # the resized image has whole pixels and sits at a whole-pixel offset: the box
        # mapping must use exactly the scale and offset the pixels got
        s = min(W / width, H / height)
        w, h = max(1, round(width * s)), max(1, round(height * s))
        return w / width, h / height, float((W - w) // 2), float((H - h) // 2)

    def __call__(self, img: Image.Image) -> Tensor:
        """PIL image -> normalised float tensor [3, H, W]."""
        H, W = self.size
        img = img.convert("RGB")
        if self.mode == "stretch":
            img = img.resize((W, H), Image.BILINEAR)
        else:
            sx, sy, ox, oy = self.geometry(*img.size)
            w, h = round(img.size[0] * sx), round(img.size[1] * sy)
            canvas = Image.new("RGB", (W, H), tuple(int(255 * m) for m in IMAGENET_MEAN))
            canvas.paste(img.resize((w, h), Image.BILINEAR), (int(ox), int(oy)))
            img = canvas
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(H, W, 3)
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        return ((x.float() / 255 - mean) / std).permute(2, 0, 1).contiguous()

    def box_to_input(self, box: Tensor, width: Tensor, height: Tensor) -> Tensor:
        """xyxy original pixels [..., 4] -> xyxy input pixels (width/height broadcast)."""
        sx, sy, ox, oy = self._geometry_tensors(width, height)
        return torch.stack((box[..., 0] * sx + ox, box[..., 1] * sy + oy,
                            box[..., 2] * sx + ox, box[..., 3] * sy + oy), -1)

    def box_to_original(self, box: Tensor, width: Tensor, height: Tensor) -> Tensor:
        """xyxy input pixels [..., 4] -> xyxy original pixels, clipped to the image."""
        sx, sy, ox, oy = self._geometry_tensors(width, height)
        w, h = width.to(box.dtype), height.to(box.dtype)
        x1 = ((box[..., 0] - ox) / sx).clamp(min=0).minimum(w)
        y1 = ((box[..., 1] - oy) / sy).clamp(min=0).minimum(h)
        x2 = ((box[..., 2] - ox) / sx).clamp(min=0).minimum(w)
        y2 = ((box[..., 3] - oy) / sy).clamp(min=0).minimum(h)
        return torch.stack((x1, y1, x2, y2), -1)

    def _geometry_tensors(self, width: Tensor, height: Tensor) -> tuple[Tensor, ...]:
        H, W = self.size
        w, h = width.double(), height.double()
        if self.mode == "stretch":
            sx, sy = W / w, H / h
            return sx.float(), sy.float(), torch.zeros_like(sx).float(), torch.zeros_like(sy).float()
        s = torch.minimum(W / w, H / h)
        nw, nh = (w * s).round().clamp(min=1), (h * s).round().clamp(min=1)
        return ((nw / w).float(), (nh / h).float(), torch.div(W - nw, 2, rounding_mode="floor").float(),
                torch.div(H - nh, 2, rounding_mode="floor").float())


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image, raising BadImageError (not a PIL traceback) on failure."""
    p = Path(path)
    if not p.is_file():
        raise BadImageError(f"missing image {p}")
    try:
        with Image.open(p) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"cannot decode image {p}: {exc}") from None
