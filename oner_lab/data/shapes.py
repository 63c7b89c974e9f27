"""The built-in "captioned shapes" dataset: scenes, their rendering and their captions.

Pure numpy/PIL and deterministic: sample `index` of a split depends only on
(generator seed, split, index), so every sample can be regenerated to check what was
written, and a larger split extends a smaller one with the same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from oner_lab.seeds import SplitStream

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 185, 55),
    "blue": (45, 95, 240),
    "yellow": (245, 225, 35),
    "purple": (155, 55, 205),
    "orange": (250, 140, 15),
    "white": (240, 240, 240),
    "cyan": (35, 215, 225),
}
SHAPES = ("circle", "square", "triangle", "cross", "star")
SIZES = ("small", "large")
# Cells of a 3x3 grid in reading order; each object occupies its own cell.
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
POSITION_PHRASES = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}
MAX_OBJECTS = len(POSITIONS)
CAPTIONS_PER_EVAL_IMAGE = 5
# Zero-shot classification: every colour+shape pair is a class; its prompts reuse training words.
CLASS_NAMES = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)
CLASS_TEMPLATES = (
    "a photo of a {}.",
    "a {} on a dark background.",
    "there is a {}.",
    "a picture of a {}.",
    "an image of a {}.",
)
SPLITS = ("train", "shapes", "shapes_cls")
_SPLIT_STREAM = {split: int(SplitStream[split.upper()]) for split in SPLITS}
_COUNT_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SUPERSAMPLE = 4  # draw at 4x and box-downsample: anti-aliased edges


@dataclass(frozen=True)
class ShapeObject:
    """One object; geometry in unit coordinates of the image (0..1)."""

    colour: str
    shape: str
    size: str
    cell: int
    cx: float
    cy: float
    radius: float

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def row(self) -> int:
        return self.cell // 3

    @property
    def col(self) -> int:
        return self.cell % 3


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: tuple[int, int, int]


@dataclass(frozen=True)
class GeneratedSample:
    """What the generator makes for one index of a split (captions empty for classification)."""

    scene: Scene
    captions: tuple[str, ...]
    label: int | None


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """An independent stream per (seed, split, index): splits never share scenes' randomness."""
    return np.random.default_rng([seed % 2**64, _SPLIT_STREAM[split], index])


def make_sample(seed: int, split: str, index: int, max_objects: int, images_per_class: int = 1) -> GeneratedSample:
    """Sample `index` of `split`: one caption for train, five distinct for "shapes", a label for "shapes_cls"."""
    rng = sample_rng(seed, split, index)
    if split == "shapes_cls":
        label = index // images_per_class
        colour, shape = CLASS_NAMES[label].split(" ")
        return GeneratedSample(_scene(rng, [(colour, shape)]), (), label)
    count = int(rng.integers(1, max_objects + 1))
    kinds = rng.choice(len(CLASS_NAMES), size=count, replace=False)  # distinct colour+shape pairs
    scene = _scene(rng, [tuple(CLASS_NAMES[k].split(" ")) for k in kinds])
    how_many = 1 if split == "train" else CAPTIONS_PER_EVAL_IMAGE
    return GeneratedSample(scene, captions(scene, rng, how_many), None)


def _scene(rng: np.random.Generator, kinds: Sequence[tuple[str, str]]) -> Scene:
    cells = rng.choice(MAX_OBJECTS, size=len(kinds), replace=False)
    objects = []
    for (colour, shape), cell in zip(kinds, cells):
        size = SIZES[int(rng.integers(2))]
        radius = rng.uniform(0.15, 0.165) if size == "large" else rng.uniform(0.105, 0.12)
        slack = (1 / 6 - radius) * 0.8  # jitter inside the cell, never into a neighbour
        cx = (cell % 3 + 0.5) / 3 + rng.uniform(-slack, slack)
        cy = (cell // 3 + 0.5) / 3 + rng.uniform(-slack, slack)
        objects.append(ShapeObject(colour, shape, size, int(cell), float(cx), float(cy), float(radius)))
    grey = int(rng.integers(15, 50))
    red, green, blue = (int(grey + t) for t in rng.integers(-5, 6, size=3))
    return Scene(tuple(objects), (red, green, blue))


def render(scene: Scene, image_size: int) -> np.ndarray:
    """The scene as a uint8 [H, W, 3] array, drawn at 4x and box-downsampled."""
    side = image_size * _SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), scene.background)
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw(draw, obj, side)
    return np.asarray(canvas.reduce(_SUPERSAMPLE))


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, side: int) -> None:
    x, y, r = obj.cx * side, obj.cy * side, obj.radius * side
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif obj.shape == "square":
        h = r * 0.85
        draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x, y - r), (x - r * 0.95, y + r * 0.8), (x + r * 0.95, y + r * 0.8)], fill=fill)
    elif obj.shape == "cross":
        t = r * 0.33
        draw.rectangle([x - r, y - t, x + r, y + t], fill=fill)
        draw.rectangle([x - t, y - r, x + t, y + r], fill=fill)
    elif obj.shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        draw.polygon(list(zip(x + radii * np.cos(angles), y + radii * np.sin(angles))), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; known: {', '.join(SHAPES)}")


# ---- captions: each family is a distinct phrasing; all mention every object and nothing else ----


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(obj: ShapeObject, size: bool) -> str:
    words = f"{obj.size} {obj.colour} {obj.shape}" if size else f"{obj.colour} {obj.shape}"
    return f"{_article(words)} {words}"


def _and(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _located(obj: ShapeObject) -> str:
    return f"{_noun(obj, size=True)} {POSITION_PHRASES[obj.position]}"


def _full(objs: Sequence[ShapeObject], rng: np.random.Generator) -> str:
    return _and([_located(o) for o in objs])


def _there_is(objs: Sequence[ShapeObject], rng: np.random.Generator) -> str:
    return f"there is {_and([_located(o) for o in objs])}."


def _picture(objs: Sequence[ShapeObject], rng: np.random.Generator) -> str:
    opening = ("a picture of", "a photo of", "an image of")[int(rng.integers(3))]
    return f"{opening} {_and([_noun(o, size=False) for o in objs])}"


def _listing(objs: Sequence[ShapeObject], rng: np.random.Generator) -> str:
    return "; ".join(f"{o.colour} {o.shape}, {o.position}" for o in objs)


def _counted(objs: Sequence[ShapeObject], rng: np.random.Generator) -> str:
    noun = "shape" if len(objs) == 1 else "shapes"
    return f"{_COUNT_WORDS[len(objs) - 1]} {noun}: {_and([_noun(o, size=True) for o in objs])}."


def _position_first(objs: Sequence[ShapeObject], rng: np.random.Generator) -> str:
    return "; ".join(f"{POSITION_PHRASES[o.position]}, {_noun(o, size=True)}" for o in objs) + "."


def _background(objs: Sequence[ShapeObject], rng: np.random.Generator) -> str:
    return f"{_and([_noun(o, size=True) for o in objs])} on a dark background."


def _relation(objs: Sequence[ShapeObject], rng: np.random.Generator) -> str:
    first, second = objs
    if first.row != second.row:
        relation = "above" if first.row < second.row else "below"
    else:
        relation = "to the left of" if first.col < second.col else "to the right of"
    return f"{_noun(first, size=False)} {relation} {_noun(second, size=False)}"


_Family = Callable[[Sequence[ShapeObject], np.random.Generator], str]
CAPTION_FAMILIES: dict[str, _Family] = {
    "full": _full,
    "there_is": _there_is,
    "picture": _picture,
    "listing": _listing,
    "counted": _counted,
    "position_first": _position_first,
    "background": _background,
    "relation": _relation,  # two-object scenes only
}


def captions(scene: Scene, rng: np.random.Generator, how_many: int) -> tuple[str, ...]:
    """`how_many` captions from distinct families, each listing the objects in a fresh random order."""
    families = [name for name in CAPTION_FAMILIES if name != "relation" or len(scene.objects) == 2]
    chosen = rng.choice(len(families), size=how_many, replace=False)
    out = []
    for family in chosen:
        order = rng.permutation(len(scene.objects))
        out.append(CAPTION_FAMILIES[families[family]]([scene.objects[i] for i in order], rng))
    return tuple(out)
