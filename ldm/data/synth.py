"""A procedural demo dataset: cartoon faces, 64x64 RGB, one folder per facial expression.

    ldm data synth-faces --out data/synth-faces --per-class 200 --seed 0

The five classes differ only by expression (mouth, eyes, brows); everything else (skin, hair style and colour,
background, shirt, face size and position) is drawn at random for every image, so a model has to read the
expression to condition on the class. Faces are drawn at 4x resolution and downsampled with a Lanczos filter,
which gives clean anti-aliased edges. Every image has its own random generator seeded from
``(seed, class index, image index)``: the same seed gives the same bytes, and ``per_class`` does not change the
images drawn before it.
"""

from __future__ import annotations

import colorsys
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SYNTH_CLASSES = ("frowning", "sleepy", "smiling", "surprised", "winking")
# written into the dataset folder: what made it, so that a model card can say that no real person is pictured (a
# hidden file: the class-folder scan ignores it)
SYNTH_MARKER = ".ldm-synthetic.json"


def is_synthetic_dataset(root: str | Path) -> bool:
    """Whether ``root`` was drawn by :func:`make_synth_faces` (its marker file is there and names its classes)."""
    import json

    try:
        marker = json.loads((Path(root) / SYNTH_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("generator") == "ldm data synth-faces"


SIZE = 64  # output side in pixels
SCALE = 4  # drawing happens at SIZE * SCALE, then Lanczos downsampling

# skin tones from light to dark (jittered per image)
_SKIN = [(255, 224, 196), (241, 194, 150), (224, 172, 125), (198, 134, 90), (161, 102, 64), (112, 72, 46)]
# natural hair colours plus a few dyed ones
_HAIR = [(30, 24, 20), (70, 45, 28), (120, 78, 40), (200, 160, 80), (170, 70, 30), (150, 150, 155), (230, 225, 215)]
_HAIR_DYED = [(40, 90, 200), (190, 40, 120), (40, 150, 90)]
_HAIR_STYLES = ("bald", "short", "long", "spiky", "bun", "fringe")
_OUTLINE = (25, 18, 15)
_MOUTH = (110, 25, 35)


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _hsv(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*s), rng.uniform(*v))
    return int(r * 255), int(g * 255), int(b * 255)


def _darken(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(c * f) for c in rgb)


def draw_face(rng: np.random.Generator, expression: str) -> Image.Image:
    """Draw one cartoon face with the given expression (one of ``SYNTH_CLASSES``): a 64x64 RGB PIL image."""
    if expression not in SYNTH_CLASSES:
        raise ValueError(f"unknown expression {expression!r}; accepted: {', '.join(SYNTH_CLASSES)}")
    S = SIZE * SCALE
    bg = _hsv(rng, (0.15, 0.6), (0.45, 0.95))
    img = Image.new("RGB", (S, S), bg)
    d = ImageDraw.Draw(img)

    # appearance, independent of the expression
    skin = _jitter(rng, _SKIN[rng.integers(len(_SKIN))], 12)
    hair = _jitter(rng, (_HAIR + _HAIR_DYED)[rng.integers(len(_HAIR) + len(_HAIR_DYED))], 15)
    style = _HAIR_STYLES[rng.integers(len(_HAIR_STYLES))]
    shirt = _hsv(rng, (0.3, 0.9), (0.3, 0.9))
    rx = rng.uniform(64, 80)  # face half-width at 4x
    ry = rx * rng.uniform(1.08, 1.22)
    cx = S / 2 + rng.uniform(-22, 22)
    cy = S / 2 - 6 + rng.uniform(-14, 14)
    lw = max(8, round(rx * 0.14))  # stroke width of features: ~2.5 px at 64x64, survives a 4x autoencoder
    ow = max(3, round(rx * 0.05))  # outline width

    # shoulders and neck
    d.ellipse((cx - 2.0 * rx, cy + 0.95 * ry, cx + 2.0 * rx, cy + 2.6 * ry), fill=shirt, outline=_OUTLINE, width=ow)
    d.rectangle((cx - 0.32 * rx, cy + 0.6 * ry, cx + 0.32 * rx, cy + 1.05 * ry), fill=_darken(skin, 0.85))
    # hair behind the head
    if style == "long":
        d.rounded_rectangle(
            (cx - 1.22 * rx, cy - 1.12 * ry, cx + 1.22 * rx, cy + 0.95 * ry), radius=rx * 0.9, fill=hair
        )
    if style == "bun":
        r = rx * 0.42
        d.ellipse((cx - r, cy - ry - 1.45 * r, cx + r, cy - ry + 0.45 * r), fill=hair, outline=_OUTLINE, width=ow)
    # ears and face
    for side in (-1, 1):
        ex = cx + side * rx * 0.98
        d.ellipse((ex - 0.2 * rx, cy - 0.2 * ry, ex + 0.2 * rx, cy + 0.18 * ry), fill=skin, outline=_OUTLINE, width=ow)
    d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=skin, outline=_OUTLINE, width=ow)
    # hair on top of the head: a cap that follows the skull and comes down at the temples
    if style in ("short", "long", "fringe", "bun", "spiky"):
        d.polygon(_hair_cap(cx, cy, rx, ry, spiky=style == "spiky"), fill=hair, outline=_OUTLINE, width=ow)
    if style == "fringe":  # a side-swept fringe, ending above the brows
        side = 1 if rng.uniform() < 0.5 else -1
        pts = [(cx - side * 0.6 * rx, cy - 0.62 * ry), (cx + side * 0.9 * rx, cy - 0.6 * ry)]
        pts.append((cx + side * 0.78 * rx, cy - 0.45 * ry))
        d.polygon(pts, fill=hair, outline=_OUTLINE, width=max(2, ow // 2))
    # cheeks
    if rng.uniform() < 0.5:
        blush = _darken((235, 120, 120), rng.uniform(0.85, 1.0))
        for side in (-1, 1):
            bx, by = cx + side * 0.55 * rx, cy + 0.25 * ry
            d.ellipse((bx - 0.14 * rx, by - 0.08 * rx, bx + 0.14 * rx, by + 0.08 * rx), fill=blush)

    _draw_expression(d, rng, expression, cx, cy, rx, ry, lw, hair)
    return img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def _hair_cap(cx: float, cy: float, rx: float, ry: float, spiky: bool) -> list[tuple[float, float]]:
    """Outline of the hair: over the skull (slightly outside the face), back along a hairline that is highest in
    the middle and reaches down to the temples; ``spiky`` puts spikes on the crown."""
    pts = []
    n = 48
    for j in range(n + 1):  # over the top, left to right, 1.06x the face ellipse
        t = np.pi + np.pi * j / n
        r = 1.06
        if spiky and 0.15 * n < j < 0.85 * n and j % 4 == 2:
            r = 1.32
        pts.append((cx + r * rx * np.cos(t), cy + r * ry * np.sin(t) * 1.0))
    for j in range(n + 1):  # hairline, right to left
        u = 1 - 2 * j / n  # +1 (right) .. -1 (left)
        x = cx + 0.98 * u * rx
        y = cy - 0.64 * ry + 0.58 * ry * abs(u) ** 4
        pts.append((x, y))
    return pts


def _open_eye(d: ImageDraw.ImageDraw, x: float, y: float, r: float, pupil: float, lw: int) -> None:
    d.ellipse((x - r, y - 1.2 * r, x + r, y + 1.2 * r), fill=(255, 255, 255), outline=_OUTLINE, width=max(3, lw // 2))
    p = r * pupil
    d.ellipse((x - p, y - p, x + p, y + p), fill=_OUTLINE)


def _closed_eye(d: ImageDraw.ImageDraw, x: float, y: float, r: float, lw: int, down: bool) -> None:
    """A thick arc: ``down`` = a drooping lid (sleepy, U-shaped), else an upward arc (a wink, ^-shaped)."""
    box = (x - 1.1 * r, y - 0.9 * r, x + 1.1 * r, y + 0.9 * r)
    d.arc(box, 10, 170, fill=_OUTLINE, width=lw) if down else d.arc(box, 190, 350, fill=_OUTLINE, width=lw)


def _draw_expression(d, rng, expression, cx, cy, rx, ry, lw, hair) -> None:
    ey = cy - 0.02 * ry  # eye line
    ex = 0.4 * rx  # eye offset from the centre line
    er = rx * rng.uniform(0.17, 0.2)  # eye radius
    by = ey - 1.9 * er  # brow line
    my = cy + 0.48 * ry  # mouth line
    mw = rx * rng.uniform(0.42, 0.52)  # mouth half-width
    brow = _darken(hair, 0.5)
    wink_side = 1 if rng.uniform() < 0.5 else -1

    # eyes
    for side in (-1, 1):
        x = cx + side * ex
        if expression == "sleepy":
            _closed_eye(d, x, ey, er, lw, down=True)
        elif expression == "winking" and side == wink_side:
            _closed_eye(d, x, ey + 0.2 * er, er, lw, down=False)
        elif expression == "surprised":
            _open_eye(d, x, ey, er * 1.35, 0.4, lw)
        else:
            _open_eye(d, x, ey, er, 0.5, lw)

    # brows
    bw = er * 1.2
    for side in (-1, 1):
        x = cx + side * ex
        if expression == "frowning":  # inner ends pulled down and in
            d.line((x + side * bw, by - 0.5 * er, x - side * bw * 0.9, by + 0.55 * er), fill=brow, width=lw)
        elif expression == "surprised":  # raised high, arched
            d.arc((x - bw, by - 0.95 * er, x + bw, by + 0.35 * er), 200, 340, fill=brow, width=lw)
        elif expression == "sleepy":  # low and flat
            d.line((x - bw, by + 0.5 * er, x + bw, by + 0.5 * er), fill=brow, width=max(3, lw * 2 // 3))
        else:
            d.arc((x - bw, by - 0.4 * er, x + bw, by + 0.6 * er), 200, 340, fill=brow, width=max(3, lw * 2 // 3))

    # mouth
    if expression == "smiling":  # a big open D-shaped grin
        h = mw * rng.uniform(0.75, 0.95)
        box = (cx - mw, my - h, cx + mw, my + h)
        d.chord(box, 0, 180, fill=_MOUTH)
        # a band of white teeth along the top edge: visible on every skin tone
        t = 0.4
        tw = mw * (1 - t * t) ** 0.5
        d.polygon([(cx - mw, my), (cx + mw, my), (cx + tw, my + t * h), (cx - tw, my + t * h)], fill=(255, 255, 255))
        d.chord(box, 0, 180, outline=_OUTLINE, width=max(3, lw // 2))
    elif expression == "frowning":  # a downturned arc
        h = mw * rng.uniform(0.5, 0.65)
        d.arc((cx - mw, my - 0.2 * h, cx + mw, my + 1.8 * h), 195, 345, fill=_OUTLINE, width=round(lw * 1.25))
    elif expression == "surprised":  # an open O
        w = mw * rng.uniform(0.38, 0.48)
        d.ellipse((cx - w, my - 1.1 * w, cx + w, my + 1.3 * w), fill=_MOUTH, outline=_OUTLINE, width=max(3, lw // 2))
    elif expression == "sleepy":  # a flat line
        w = mw * 0.8
        d.line((cx - w, my, cx + w, my), fill=_OUTLINE, width=lw)
    else:  # winking: a lopsided smirk rising towards the winking side
        w = mw * 0.9
        x0 = cx + wink_side * 0.15 * rx
        if wink_side > 0:
            d.arc((x0 - w, my - 0.9 * w, x0 + w, my + 0.5 * w), 15, 120, fill=_OUTLINE, width=lw)
        else:
            d.arc((x0 - w, my - 0.9 * w, x0 + w, my + 0.5 * w), 60, 165, fill=_OUTLINE, width=lw)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # Pillow writes no tIME chunk unless asked: the bytes depend on the pixels only
    return buf.getvalue()


def make_synth_faces(out: str | Path, per_class: int = 200, seed: int = 0) -> list[str]:
    """Write ``out/<class>/<i:04d>.png`` (64x64 RGB) for every class in ``SYNTH_CLASSES`` and the marker file
    :data:`SYNTH_MARKER`; return the paths of the images written.

    Image ``i`` of class ``k`` depends only on ``(seed, k, i)``.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out = Path(out)
    paths = []
    for k, name in enumerate(SYNTH_CLASSES):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, k, i])
            path = folder / f"{i:04d}.png"
            path.write_bytes(_png_bytes(draw_face(rng, name)))
            paths.append(str(path))
    import json

    marker = {
        "generator": "ldm data synth-faces",
        "classes": list(SYNTH_CLASSES),
        "per_class": per_class,
        "seed": seed,
    }
    (out / SYNTH_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return paths
