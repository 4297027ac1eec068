"""Photo edits a user's copies go through: the views the self-supervised loss learns to ignore, and
the named edits `bench/near_duplicates.py` measures.

Each edit takes an RGB PIL image and a numpy Generator and returns an RGB PIL image; `random_view`
chains a random subset of them (SimCLR-style augmentation extended with the edits of real copies:
banners, borders, re-crops to another aspect, JPEG, rotation).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import partial

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

Edit = Callable[[Image.Image, np.random.Generator], Image.Image]


def crop(image: Image.Image, rng: np.random.Generator, scale: tuple[float, float] = (0.45, 0.9)) -> Image.Image:
    """A random crop keeping `scale` of the area, aspect ratio 3:4 to 4:3."""
    w, h = image.size
    area = w * h * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, int(round(np.sqrt(area * aspect)))), min(h, int(round(np.sqrt(area / aspect))))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((left, top, left + cw, top + ch))


def reframe(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The same photo cut to landscape or portrait (a wallpaper for a phone and for a screen)."""
    w, h = image.size
    if rng.random() < 0.5:  # landscape 16:9
        ch = min(h, int(w * 9 / 16))
        top = int(rng.integers(0, h - ch + 1))
        return image.crop((0, top, w, top + ch))
    cw = min(w, int(h * 9 / 16))  # portrait 9:16
    left = int(rng.integers(0, w - cw + 1))
    return image.crop((left, 0, left + cw, h))


def flip(image: Image.Image, _rng: np.random.Generator) -> Image.Image:
    return ImageOps.mirror(image)


def grayscale(image: Image.Image, _rng: np.random.Generator) -> Image.Image:
    return ImageOps.grayscale(image).convert("RGB")


def colour(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation each scaled by 0.6-1.4 (a filter, an exposure fix)."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(rng.uniform(0.6, 1.4))
    return image


def jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=int(rng.integers(15, 45)))
    return Image.open(io.BytesIO(out.getvalue())).convert("RGB")


def blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.8, 2.0) * max(image.size) / 256))


def banner(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """An opaque caption bar over 15-25% of the height, top or bottom, with text-like blocks."""
    image = image.copy()
    w, h = image.size
    bar = int(h * rng.uniform(0.15, 0.25))
    top = 0 if rng.random() < 0.5 else h - bar
    draw = ImageDraw.Draw(image)
    fill = tuple(int(c) for c in rng.integers(0, 256, 3))
    draw.rectangle((0, top, w, top + bar), fill=fill)
    ink = tuple(255 - c for c in fill)
    x = int(w * 0.05)
    while x < w * 0.9:  # words
        word = int(w * rng.uniform(0.05, 0.15))
        draw.rectangle((x, top + bar * 0.35, x + word, top + bar * 0.65), fill=ink)
        x += word + int(w * 0.03)
    return image


def border(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A screenshot-like frame: the photo on a flat background with a bar above (a viewer's chrome)."""
    w, h = image.size
    pad = int(max(w, h) * rng.uniform(0.06, 0.15))
    background = tuple(int(c) for c in rng.integers(0, 256, 3))
    canvas = Image.new("RGB", (w + 2 * pad, h + 3 * pad), background)
    canvas.paste(image, (pad, 2 * pad))
    ImageDraw.Draw(canvas).rectangle((0, 0, w + 2 * pad, pad), fill=tuple(255 - c for c in background))
    return canvas


def rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A small tilt (±4-10°), cropped back to the largest upright rectangle inside."""
    angle = rng.uniform(4, 10) * (1 if rng.random() < 0.5 else -1)
    rotated = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
    w, h = image.size
    shrink = 1 - np.sin(np.radians(abs(angle))) * 1.2
    cw, ch = int(w * shrink), int(h * shrink)
    return rotated.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))


# The named edits of the near-duplicate benchmark, in its table's order.
EDITS: dict[str, Edit] = {
    "crop": crop,
    "reframe (landscape/portrait)": reframe,
    "flip": flip,
    "grayscale": grayscale,
    "colour": colour,
    "jpeg q15-45": jpeg,
    "blur": blur,
    "banner": banner,
    "border (screenshot)": border,
    "rotate": rotate,
}

# Training views: each edit applied with this probability, in this order (geometry, then pixels,
# then overlays). Crop always runs (it is what makes two views of one photo differ most).
VIEW_PROBABILITIES: tuple[tuple[Edit, float], ...] = (
    (crop, 1.0), (reframe, 0.15), (rotate, 0.2), (flip, 0.5), (colour, 0.8), (grayscale, 0.2),
    (blur, 0.2), (banner, 0.25), (border, 0.15), (jpeg, 0.3),
)  # fmt: skip


# Zoom-heavy views for a projection head that must meet re-framed and tightly cropped copies: the
# default's, with crops down to a quarter of the photo and the landscape/portrait re-crop in four
# views of ten (same edits in the same order, so the same draws of the generator).
_ZOOM_CHANGES: dict[Edit, tuple[Edit, float]] = {crop: (partial(crop, scale=(0.25, 0.9)), 1.0), reframe: (reframe, 0.4)}
ZOOM_VIEW_PROBABILITIES: tuple[tuple[Edit, float], ...] = tuple(_ZOOM_CHANGES.get(edit, (edit, p)) for edit, p in VIEW_PROBABILITIES)

VIEW_RECIPES: dict[str, tuple[tuple[Edit, float], ...]] = {"default": VIEW_PROBABILITIES, "zoom": ZOOM_VIEW_PROBABILITIES}
# What each recipe changes from the default's views, in words (a model card names it); one per recipe.
VIEW_RECIPE_NOTES: dict[str, str] = {
    "default": "",
    "zoom": "zoom-heavy: crops down to a quarter of the photo, landscape/portrait re-framing in 4 of 10",
}


def recipe_suffix(recipe: str) -> str:
    """What a cache file's name adds for views of `recipe`: nothing for the default, whose caches
    predate recipes and keep their names."""
    if recipe not in VIEW_RECIPES:
        raise ValueError(f"unknown view recipe {recipe!r}; known: {sorted(VIEW_RECIPES)}")
    return "" if recipe == "default" else f"-{recipe}"


def random_view(image: Image.Image, rng: np.random.Generator, recipe: str = "default") -> Image.Image:
    for edit, probability in VIEW_RECIPES[recipe]:
        if rng.random() < probability:
            image = edit(image, rng)
    return image
