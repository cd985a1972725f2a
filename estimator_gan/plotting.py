"""Pictures a person looks at: sample grids, 2D scatter plots and metric charts, as PNG.

Drawn with Pillow; `save_png` writes through `fileio.atomic_write`, so a viewer or a crash never
sees a half-written picture, on any filesystem a model directory may live on.
"""
from __future__ import annotations

import io
import math
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from estimator_gan import fileio


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
    return fileio.atomic_write(path, png_bytes(image))


def samples_picture(samples: np.ndarray, centres=None) -> Image.Image:
    """A grid for image samples, a scatter plot for 2D points."""
    samples = np.asarray(samples)
    if samples.ndim == 2 and samples.shape[1] == 2:
        return scatter_image(samples, centres)
    if samples.ndim == 3:
        samples = samples[..., None]
    return grid_image(samples)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _tick(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def line_chart(title: str, xs: Sequence[float], ys: Sequence[Optional[float]],
               reference: Optional[Sequence[Optional[float]]] = None,
               size: Tuple[int, int] = (420, 280), log: bool = False) -> Image.Image:
    """One metric over training steps: the model's values (blue, with markers) and, if given,
    the real-vs-real reference (orange, dashed). None values (and, with `log`, a log10 y axis,
    values <= 0) are left out."""
    if log:
        def to_log(vals):
            return [math.log10(v) if v is not None and v > 0 else None for v in vals]

        ys = to_log(ys)
        reference = None if reference is None else to_log(reference)
        title += " (log scale)"
    width, height = size
    left, right, top, bottom = 62, 14, 46, 40
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font, small = _font(14), _font(11)
    draw.text((left, 8), title, fill=(0, 0, 0), font=font)
    series = [("model", ys, (30, 90, 200))]
    if reference is not None:
        series.append(("real reference", reference, (230, 120, 20)))
    points = [(float(x), float(y)) for _, vals, _ in series for x, y in zip(xs, vals)
              if y is not None and math.isfinite(y)]
    x0, y0, x1, y1 = left, top, width - right, height - bottom
    draw.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))
    if not points:
        draw.text((x0 + 10, (y0 + y1) // 2), "no values", fill=(120, 120, 120), font=small)
        return image
    xmin, xmax = min(p[0] for p in points), max(p[0] for p in points)
    ymin, ymax = min(p[1] for p in points), max(p[1] for p in points)
    if xmax == xmin:
        xmin, xmax = xmin - 1, xmax + 1
    pad = (ymax - ymin) * 0.08 or max(abs(ymax) * 0.1, 1e-3)
    ymin, ymax = (ymin - pad if ymin - pad >= 0 or ymin < 0 else 0.0), ymax + pad

    def px(x, y):
        return (x0 + (x - xmin) / (xmax - xmin) * (x1 - x0),
                y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))

    for frac in (0.0, 0.5, 1.0):
        value = ymin + frac * (ymax - ymin)
        _, py = px(xmin, value)
        draw.line([(x0, py), (x1, py)], fill=(232, 232, 232))
        draw.text((4, py - 6), _tick(10 ** value if log else value), fill=(60, 60, 60), font=small)
    for x in sorted(set(float(v) for v in xs)):
        qx, _ = px(x, ymin)
        draw.line([(qx, y1), (qx, y1 + 4)], fill=(120, 120, 120))
    for frac in (0.0, 1.0) if len(set(xs)) > 1 else (0.5,):
        value = xmin + frac * (xmax - xmin)
        qx, _ = px(value, ymin)
        label = f"{value:.0f}"
        draw.text((min(max(qx - 3 * len(label), 0), width - 7 * len(label)), y1 + 6), label,
                  fill=(60, 60, 60), font=small)
    draw.text(((x0 + x1) // 2 - 12, y1 + 20), "step", fill=(60, 60, 60), font=small)
    legend_x = x1 - 8
    for name, vals, colour in reversed(series):
        pts = [px(float(x), float(y)) for x, y in zip(xs, vals) if y is not None and math.isfinite(y)]
        if name == "model":
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for qx, qy in pts:
                draw.ellipse([qx - 3, qy - 3, qx + 3, qy + 3], fill=colour)
        else:
            for (ax, ay), (bx, by) in zip(pts, pts[1:]):
                steps = max(1, int(math.hypot(bx - ax, by - ay) // 6))
                for i in range(0, steps, 2):
                    draw.line([(ax + (bx - ax) * i / steps, ay + (by - ay) * i / steps),
                               (ax + (bx - ax) * (i + 1) / steps, ay + (by - ay) * (i + 1) / steps)],
                              fill=colour, width=2)
            if len(pts) == 1:
                draw.line([(x0, pts[0][1]), (x1, pts[0][1])], fill=colour, width=1)
        legend_x -= 7 * len(name) + 18
        draw.rectangle([legend_x, 31, legend_x + 10, 35], fill=colour)
        draw.text((legend_x + 13, 26), name, fill=(60, 60, 60), font=small)
    return image


def tile(pictures: Sequence[Image.Image], columns: int = 3,
         background: Tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Pictures side by side, `columns` per row, each cell the size of the largest picture."""
    if not pictures:
        raise ValueError("tile needs at least one picture")
    columns = min(columns, len(pictures))
    cell_w = max(p.width for p in pictures)
    cell_h = max(p.height for p in pictures)
    rows = int(math.ceil(len(pictures) / columns))
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), background)
    for i, picture in enumerate(pictures):
        r, c = divmod(i, columns)
        canvas.paste(picture.convert("RGB"), (c * cell_w, r * cell_h))
    return canvas
