"""The image pipeline: read, resize to the network input, normalise; boxes follow.

``stretch`` resizes every image to the input size (e.g. 224 x 224) regardless of
aspect. ``letterbox`` keeps the aspect and pads (for later methods). Boxes are
mapped into input pixels with the image and predictions mapped back to
original pixels for evaluation.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from vgkit.errors import VgkitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Pillow's own default: images above it are refused as possible decompression bombs.
DEFAULT_MAX_PIXELS = 89_478_485
MAX_PIXELS_ENV = "VGKIT_MAX_IMAGE_PIXELS"


class BadImageError(VgkitError):
    """An image file that is missing, cannot be decoded, or is over the pixel limit."""


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
            img = img.resize((W, H), Image.Resampling.BILINEAR)
        else:
            sx, sy, ox, oy = self.geometry(*img.size)
            w, h = round(img.size[0] * sx), round(img.size[1] * sy)
            canvas = Image.new("RGB", (W, H), tuple(int(255 * m) for m in IMAGENET_MEAN))
            canvas.paste(img.resize((w, h), Image.Resampling.BILINEAR), (int(ox), int(oy)))
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


def max_image_pixels() -> int | None:
    """The pixel limit of :func:`read_image`: ``$VGKIT_MAX_IMAGE_PIXELS`` (0: none), else Pillow's."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(raw.replace("_", ""))
    except ValueError:
        raise VgkitError(f"{MAX_PIXELS_ENV}={raw!r}: expected a whole number of pixels "
                         "(0 for no limit)") from None
    return limit if limit > 0 else None


def read_image(path: str | os.PathLike[str], *, upright: bool = False) -> Image.Image:
    """Open and fully decode an image as RGB, raising BadImageError (never a PIL traceback).

    Datasets keep the stored pixel frame (``upright=False``): their boxes were drawn in
    it, whatever an EXIF orientation tag says. ``upright=True`` applies the tag, giving
    the picture as a viewer shows it, for a user's own photo in ``predict``.
    """
    p = Path(path)
    if not p.is_file():
        raise BadImageError(f"missing image {p}")
    return _decode(p, str(p), upright)


def decode_image(data: bytes, name: str, *, upright: bool = True) -> Image.Image:
    """Decode image bytes (an upload called `name`) as :func:`read_image` decodes a file."""
    if not data:
        raise BadImageError(f"the image {name!r} is empty (0 bytes)")
    return _decode(io.BytesIO(data), repr(name), upright)


def _decode(source: Path | io.BytesIO, label: str, upright: bool) -> Image.Image:
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            # the size is checked below against vgkit's limit, before any pixel is decoded
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(source)
            finally:
                Image.MAX_IMAGE_PIXELS = pil_limit
        with img:
            w, h = img.size
            if limit is not None and w * h > limit:
                raise BadImageError(f"{label}: {w}x{h} = {w * h:,} pixels is over the limit of "
                                    f"{limit:,} (a decompression bomb?); if you trust the file, "
                                    f"raise the limit with {MAX_PIXELS_ENV}=N (0: none)")
            img.load()
            shown: Image.Image = ImageOps.exif_transpose(img) if upright else img
            return shown.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            MemoryError) as exc:
        raise BadImageError(f"cannot decode image {label}: {exc}") from None
