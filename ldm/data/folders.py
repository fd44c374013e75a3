"""Class-folder image datasets (torchvision ``ImageFolder`` semantics) that skip and report bad files.

    scan = scan_image_folder("data/synth-faces")  # classes = sorted folder names, label = index in that list
    ds = ImageFolderDataset(scan, image_size=64, channels=3, hflip=True)
    image, label = ds[0]  # (3, 64, 64) float in [-1, 1], int

Every file is opened and fully decoded once at scan time, so an unreadable, truncated or non-image file is
skipped and listed (with the reason) before any work starts, instead of crashing a run half-way.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ldm.errors import DataError, UserError

if TYPE_CHECKING:
    import torch

# how images are brought to the configured size; recorded in latent cache manifests
PREPROCESSING = {
    "resize": "shorter side to image_size, bicubic with antialiasing (PIL)",
    "crop": "centre",
    "alpha": "composited on white",
    "value_range": [-1.0, 1.0],
}


@dataclass
class FolderScan:
    """Result of :func:`scan_image_folder`.

    ``samples[i] = (path, label)`` with ``label`` an index into ``classes``; ``skipped = [(path, reason)]``;
    ``modes[i]`` and ``sizes[i]`` (width, height) describe ``samples[i]`` as found on disk.
    """

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Number of readable images per class, in label order."""
        c = Counter(label for _, label in self.samples)
        return {name: c[i] for i, name in enumerate(self.classes)}


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__"


def _check_image(path: Path) -> tuple[str, tuple[int, int]] | str:
    """(mode, size) of a readable image, or the reason it cannot be used."""
    try:
        with Image.open(path) as im:
            mode, size = im.mode, im.size
            if im.format == "JPEG":  # decode at 1/8 scale: still reads the whole stream, much faster
                im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()  # decodes every pixel: catches truncated and corrupt files, not only bad headers
            if size[0] < 1 or size[1] < 1:
                return "empty image (0 pixels)"
            return mode, size
    except UnidentifiedImageError:
        return "not an image (no image format recognised)"
    except Image.DecompressionBombError as e:
        return f"too large to decode safely ({e})"
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL reports truncation/corruption through these
        return f"truncated or corrupt ({e})"


def class_name_collisions(names: Sequence[str]) -> list[list[str]]:
    """Groups of class names that one name cannot tell apart: equal once case, spacing and the characters a file
    name cannot hold are ignored (``Alice``/``alice``, ``a b``/``a-b``). Classes are found by name ignoring case
    and spacing, and output files are named by :func:`ldm.utils.slugify`."""
    from ldm.utils import slugify

    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(slugify(name).casefold(), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def _walk_class_files(root: Path, classes: list[str]) -> tuple[dict[str, list[Path]], list[tuple[Path, str]]]:
    """``({class: sorted candidate files}, [(path, why it is not used)])``: each class folder walked, following
    links, but never into a folder already entered (a loop), nor through a link into the rest of the data folder
    (the folder itself or another class: another class's images are not this class's); every real file is listed
    once, under the first path that reaches it (sorted order). The paths left out are reported."""
    real_root = os.path.realpath(root)
    listing: dict[str, list[Path]] = {}
    left_out: list[tuple[Path, str]] = []
    first_path: dict[str, Path] = {}
    for name in classes:
        real_class = os.path.realpath(root / name)
        seen_dirs: set[str] = set()
        files = []
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            real = os.path.realpath(dirpath)
            inside_class = real == real_class or real.startswith(real_class + os.sep)
            inside_root = real == real_root or real.startswith(real_root + os.sep)
            if real in seen_dirs or (inside_root and not inside_class) or real_root.startswith(real + os.sep):
                why = (
                    "a link back into a folder already searched (a loop)"
                    if real in seen_dirs
                    else ("a link to another part of the data folder (another class's images belong to that class)")
                )
                left_out.append((Path(dirpath), f"{why}; not followed"))
                dirnames[:] = []
                continue
            seen_dirs.add(real)
            dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
            for f in sorted(f for f in filenames if not _hidden(f)):
                path = Path(dirpath) / f
                target = os.path.realpath(path)
                if target in first_path:
                    left_out.append((path, f"the same file as {first_path[target]} (through a link); used once"))
                    continue
                first_path[target] = path
                files.append(path)
        listing[name] = sorted(files)
    return listing, left_out


def list_class_files(root: str | Path, duplicates: list[tuple[Path, str]] | None = None) -> dict[str, list[Path]]:
    """Candidate files of ``root/<class>/...`` without opening them: ``{class: sorted paths}``, classes sorted.

    Hidden files and folders are ignored; subfolders of a class folder are searched, links followed; a file reached
    by several paths is listed once (the others go to ``duplicates`` when given, with the reason). Raises
    :class:`DataError` when ``root`` is missing, is not a folder, has no class subfolders, or has class names that
    differ only in case or spacing.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"data path {root} is a file; expected a folder with one subfolder of images per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not _hidden(p.name))
    if not classes:
        loose = [p.name for p in root.iterdir() if p.is_file() and not _hidden(p.name)]
        hint = (
            f" (it holds {len(loose)} loose files: move them into a folder named after their class)" if loose else ""
        )
        raise DataError(
            f"no class subfolders in {root}{hint}; expected {root}/<class name>/<images>, one folder per class"
        )
    collisions = class_name_collisions(classes)
    if collisions:
        pairs = "; ".join(" / ".join(repr(n) for n in g) for g in collisions)
        raise DataError(
            f"class folders of {root} whose names differ only in case, spacing or punctuation: {pairs}. A class is "
            "picked by its name ignoring these, and output files are named after it: rename or merge them"
        )
    listing, found_twice = _walk_class_files(root, classes)
    if duplicates is not None:
        duplicates.extend(found_twice)
    return listing


def scan_image_folder(root: str | Path) -> FolderScan:
    """List the images of ``root/<class>/...`` (class folders sorted by name, files found recursively and sorted).

    Hidden files and folders (``.name``) are ignored. Files that PIL cannot open and fully decode are skipped and
    listed in ``skipped`` with a reason. Raises :class:`DataError` when ``root`` is missing or not a folder, has no
    class subfolders, or a class folder has no readable image.
    """
    root = Path(root)
    duplicates: list[tuple[Path, str]] = []
    listing = list_class_files(root, duplicates)
    classes = list(listing)
    scan = FolderScan(root=root, classes=classes, samples=[], skipped=duplicates)
    for label, name in enumerate(classes):
        found = 0
        for path in listing[name]:
            result = _check_image(path)
            if isinstance(result, str):
                scan.skipped.append((path, result))
                continue
            scan.samples.append((path, label))
            scan.modes.append(result[0])
            scan.sizes.append(result[1])
            found += 1
        if found == 0:
            bad = [s for s in scan.skipped if s[0].is_relative_to(root / name)]
            detail = f" ({len(bad)} files or folders left out, e.g. {bad[0][0].name}: {bad[0][1]})" if bad else ""
            raise DataError(
                f"class folder {root / name} has no readable image{detail}; "
                "every class folder needs at least one image (PNG, JPEG, PGM, ... anything PIL reads)"
            )
    return scan


def _to_8bit(im: Image.Image) -> Image.Image:
    """Bring any PIL mode to L, RGB or RGBA with 8 bits per channel (16-bit scaled by 1/257, alpha kept)."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16"):
            a = a / 257.0  # 65535 -> 255
        elif im.mode == "I":
            # 32-bit int images are usually 16-bit data (some PNG/TIFF readers); 8-bit data stays as is
            a = a / 257.0 if a.max(initial=0) > 255 else a
        elif a.max(initial=0) <= 1.0:  # float images in [0, 1]
            a = a * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "La", "PA", "RGBa", "RGBA"):
        return im.convert("RGBA")
    if im.mode in ("L", "RGB"):
        return im
    if im.mode == "1":
        return im.convert("L")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX


def load_image(path: str | Path, image_size: int, channels: int) -> torch.Tensor:
    """Load an image as a float tensor ``(channels, image_size, image_size)`` in [-1, 1].

    Any PIL mode is accepted (L, RGB, RGBA and LA composited on white, P, 16-bit I;16/I scaled to 8 bits, CMYK...).
    The shorter side is resized to ``image_size`` (bicubic, antialiased) and the centre is cropped.
    ``channels`` is 1 (grey) or 3 (RGB).
    """
    import torch

    if channels not in (1, 3):
        raise UserError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels}")
    if image_size < 1:
        raise UserError(f"data.image_size must be a positive number of pixels, got {image_size}")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)  # phone photos: store the sensor orientation in EXIF
            im = _to_8bit(im)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    if im.mode == "RGBA":
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    im = im.convert("RGB" if channels == 3 else "L")
    w, h = im.size
    m = min(w, h)
    left, top = (w - m) // 2, (h - m) // 2
    # crop the centred square and resize it in one step: the same as resizing the shorter side and centre-cropping
    im = im.resize((image_size, image_size), Image.Resampling.BICUBIC, box=(left, top, left + m, top + m))
    a = np.asarray(im, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class ImageFolderDataset:
    """Torch dataset over a class-folder tree; items are ``(image (C, S, S) float in [-1, 1], label int)``.

    ``root_or_scan`` is a folder or a :class:`FolderScan` (to reuse a scan). ``indices`` selects a subset of the
    scan's samples (e.g. from :func:`holdout_split`). ``hflip`` flips each image horizontally with probability 0.5
    (torch's global RNG, so DataLoader worker seeding applies). Attributes: ``classes``, ``samples`` (the selected
    ``(path, label)`` pairs), ``skipped`` (from the scan), ``scan``.
    """

    def __init__(
        self,
        root_or_scan: str | Path | FolderScan,
        image_size: int,
        channels: int,
        hflip: bool = False,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.scan = root_or_scan if isinstance(root_or_scan, FolderScan) else scan_image_folder(root_or_scan)
        if channels not in (1, 3):
            raise UserError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels}")
        self.image_size = image_size
        self.channels = channels
        self.hflip = hflip
        self.indices = list(range(len(self.scan.samples))) if indices is None else [int(i) for i in indices]
        self.classes = self.scan.classes
        self.samples = [self.scan.samples[i] for i in self.indices]
        self.skipped = self.scan.skipped

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch

        path, label = self.samples[i]
        x = load_image(path, self.image_size, self.channels)
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, label


def holdout_split(samples: Sequence[tuple[Any, int]], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split sample indices into (train, holdout), per class and deterministically for a given ``seed``.

    Each class holds out ``round(fraction * n)`` images (at least one when ``fraction > 0`` and the class has two
    or more), and always keeps at least one training image. Both lists are sorted.
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"holdout fraction must be in [0, 1), got {fraction}")
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(samples):
        by_class.setdefault(int(label), []).append(i)
    train: list[int] = []
    hold: list[int] = []
    for label, idx in sorted(by_class.items()):
        n = len(idx)
        k = 0 if fraction == 0 else min(n - 1, max(1, round(fraction * n)))
        perm = np.random.default_rng([seed, label]).permutation(n)  # per-class stream: classes don't interact
        hold.extend(idx[j] for j in perm[:k])
        train.extend(idx[j] for j in perm[k:])
    return sorted(train), sorted(hold)


def summarize_scan(scan: FolderScan) -> str:
    """Human-readable report: per-class counts, image sizes and modes, and skipped files with reasons."""

    def top(counter: Counter, fmt) -> str:
        items = counter.most_common()
        text = ", ".join(f"{fmt(k)} ({v})" if len(items) > 1 else fmt(k) for k, v in items[:3])
        return text + (f", ... ({len(items) - 3} more)" if len(items) > 3 else "")

    size = lambda s: f"{s[0]}x{s[1]}"  # noqa: E731
    counts = scan.counts()
    lines = [
        f"{scan.root}: {len(scan.classes)} classes, {len(scan.samples)} images"
        + (f", {len(scan.skipped)} files skipped" if scan.skipped else "")
    ]
    width = max(5, *(len(c) for c in scan.classes))
    lines.append(f"  {'class':<{width}}  {'images':>6}  sizes (WxH)  modes")
    for label, name in enumerate(scan.classes):
        sel = [i for i, (_, lab) in enumerate(scan.samples) if lab == label]
        sizes = Counter(scan.sizes[i] for i in sel)
        modes = Counter(scan.modes[i] for i in sel)
        lines.append(f"  {name:<{width}}  {counts[name]:>6}  {top(sizes, size)}  {top(modes, str)}")
    lines.append(f"all image sizes: {top(Counter(scan.sizes), size)}")
    lines.append(f"all modes: {top(Counter(scan.modes), str)}")
    if scan.skipped:
        lines.append(f"skipped {len(scan.skipped)} files:")
        for path, reason in scan.skipped:
            rel = path.relative_to(scan.root) if path.is_relative_to(scan.root) else path
            lines.append(f"  {rel}: {reason}")
    else:
        lines.append("skipped: none")
    return "\n".join(lines)
