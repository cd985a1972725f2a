"""Pictures a person looks at: sample grids and 2D scatter plots, written as PNG with Pillow.

Files are written atomically (temporary name, then rename), so a viewer or a crash never sees a
half-written PNG.
"""
from __future__ import annotations

import io
import math
import os
import tempfile
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw


def to_uint8(samples: np.ndarray) -> np.ndarray:
    """Samples in [-1, 1] -> uint8 0..255 (NaN, e.g. from a diverging generator, -> 0)."""
    samples = np.nan_to_num(np.asarray(samples, np.float32), nan=-1.0)
    return np.clip(np.rint((samples + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid_image(samples: np.ndarray, columns: Optional[int] = None, scale: int = 0,
               padding: int = 1) -> Image.Image:
    """Tile images `[N, H, W, C]` in [-1, 1] into one picture, enlarged to a visible size."""
    samples = np.asarray(samples)
    if samples.ndim != 4 or samples.shape[-1] not in (1, 3):
        raise ValueError(f"expected images [N, H, W, 1|3], got shape {samples.shape}")
    n, h, w, c = samples.shape
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    pixels = to_uint8(samples)
    canvas = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), 40, np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        canvas[y:y + h, x:x + w] = pixels[i]
    image = Image.fromarray(canvas[..., 0] if c == 1 else canvas, "L" if c == 1 else "RGB")
    scale = scale or max(1, 256 // max(h, w))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return image


def scatter_image(points: np.ndarray, centres: Optional[Sequence[Tuple[float, float]]] = None,
                  extent: Optional[float] = None, size: int = 400) -> Image.Image:
    """A 2D scatter plot of `points [N, 2]`, with mode centres drawn as red crosses."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    if extent is None:
        ref = np.asarray(centres, np.float64) if centres is not None and len(centres) else points
        extent = float(np.max(np.abs(ref))) * 1.3 + 1e-6 if ref.size else 1.0
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.line([(0, size // 2), (size, size // 2)], fill=(225, 225, 225))
    draw.line([(size // 2, 0), (size // 2, size)], fill=(225, 225, 225))

    def to_px(x, y):
        return ((x / extent + 1) * size / 2, (1 - y / extent) * size / 2)

    for x, y in points:
        if np.isfinite(x) and np.isfinite(y):
            px, py = to_px(x, y)
            draw.rectangle([px - 1, py - 1, px + 1, py + 1], fill=(30, 90, 200))
    for x, y in centres or []:
        px, py = to_px(x, y)
        draw.line([(px - 5, py), (px + 5, py)], fill=(220, 30, 30), width=2)
        draw.line([(px, py - 5), (px, py + 5)], fill=(220, 30, 30), width=2)
    return image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image: Image.Image, path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(png_bytes(image))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def samples_picture(samples: np.ndarray, centres=None) -> Image.Image:
    """A grid for image samples, a scatter plot for 2D points."""
    samples = np.asarray(samples)
    if samples.ndim == 2 and samples.shape[1] == 2:
        return scatter_image(samples, centres)
    if samples.ndim == 3:
        samples = samples[..., None]
    return grid_image(samples)
