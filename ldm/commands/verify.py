"""``ldm verify``: does an image carry the invisible watermark of a generated image, and which model made it?

    ldm verify samples/smiling-seed3.png                    # marked, model id, the model below the current folder
    ldm verify photo.jpg t2i/*.png --models ~/workspace     # several images; models searched below a folder
    ldm verify --json image.png                             # one JSON object per image, for scripts

Only the pixels are read (:mod:`ldm.watermark`): the mark survives stripping the PNG text chunks and a JPEG re-save.
The model is found by the id in the mark (the start of its weights hash) among the models below ``--models``
(default: the current folder): run pipelines (``runs/*/pipeline``) and any other folder holding a
``model_index.json``, searched only when some image is marked.

Exit status: 0 when every image carries the mark, 1 when some do not, 2 for bad input (a missing or unreadable
image, a ``--models`` that is not a folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

HELP = "say whether images carry the invisible watermark and which model made them (exit 1 if some do not)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, WebP... any Pillow reads)")
    p.add_argument(
        "--models", default=".", metavar="DIR",
        help="folder searched for the model that made a marked image: run pipelines and folders with a "
        "model_index.json below it (default: the current folder)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object per image instead of text")


def _open(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    from ldm.errors import UserError

    if not path.exists():
        raise UserError(f"image not found: {path}")
    if not path.is_file():
        raise UserError(f"{path} is a folder; give image files (PNG, JPEG, WebP... any format Pillow reads)")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path} is not a readable image ({e}); give PNG, JPEG, WebP... files") from None


def model_folders(root: Path) -> list[Path]:
    """Folders below ``root`` holding a ``model_index.json`` (run pipelines ``runs/*/pipeline`` among them); hidden
    folders (``.venv``, ``.git``...) are skipped, and the search does not descend into a model folder."""
    found = []
    for folder, dirs, files in os.walk(root):
        if "model_index.json" in files:
            found.append(Path(folder))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def model_hashes(folder: Path) -> list[str]:
    """The weights hashes a model folder's images can carry: a class-conditional pipeline's ``model_identity``
    hash in each inference dtype it may have sampled in (float32 on a CPU; float16, bfloat16 on a GPU); the folder
    hash of a text-to-image pipeline."""
    index = json.loads((folder / "model_index.json").read_text())
    if index.get("_class_name") != "ClassConditionalLatentDiffusionPipeline":
        from ldm.utils import hash_folder

        return [hash_folder(folder)]
    import copy

    import torch
    from diffusers.utils import logging as diffusers_logging

    from ldm.diffusion.pipeline import load_pipeline
    from ldm.diffusion.sample_files import weights_hash

    pipe = load_pipeline(folder, device="cpu", dtype=torch.float32)
    hashes = [weights_hash(pipe.unet, pipe.vae)]
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its warning on casting a loaded model: no module here keeps float32
    try:
        for dtype in (torch.float16, torch.bfloat16):
            vae = copy.deepcopy(pipe.vae).to(dtype) if pipe.vae is not None else None
            hashes.append(weights_hash(copy.deepcopy(pipe.unet).to(dtype), vae))
    finally:
        diffusers_logging.set_verbosity(level)
    return hashes


class ModelIndex:
    """Model folders below a root and their weights hashes, computed on first need (loading is the slow part)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._hashes: dict[Path, list[str]] | None = None

    def find(self, model_id: str) -> list[tuple[Path, str]]:
        """(folder, full weights hash) of every model whose hash starts with ``model_id``."""
        if self._hashes is None:
            self._hashes = {}
            for folder in model_folders(self.root):
                try:
                    self._hashes[folder] = model_hashes(folder)
                except Exception as e:  # noqa: BLE001 - a broken or foreign model folder: say so, go on
                    print(f"ldm verify: skipped {folder}: {type(e).__name__}: {e}", file=sys.stderr)
                    self._hashes[folder] = []
        return [(f, h) for f, hashes in self._hashes.items() for h in hashes if h.startswith(model_id)]


def _display(folder: Path) -> str:
    from ldm.run_folder import RunFolder

    try:
        shown = folder.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = folder
    return f"{RunFolder.display_name(folder)} ({shown})"


def run(args: argparse.Namespace) -> int:
    from ldm.errors import UserError
    from ldm.watermark import MIN_MARKER_AGREEMENT, decode

    root = Path(args.models).expanduser()
    if not root.is_dir():
        raise UserError(f"--models {args.models}: no such folder (give the folder that holds your runs or models)")
    paths = [Path(p) for p in args.images]
    images = [_open(p) for p in paths]  # every input checked before any verdict
    index = ModelIndex(root)
    all_marked = True
    for path, image in zip(paths, images):
        found = decode(image)
        all_marked &= found.marked
        models = index.find(found.model_id) if found.marked else []
        if args.json:
            row = {"image": str(path), **found.as_dict()}
            row["models"] = [{"folder": str(f), "weights_hash": h} for f, h in models]
            print(json.dumps(row))
            continue
        if not found.marked:
            why = found.reason or f"marker agreement {found.agreement:.2f}; marked needs {MIN_MARKER_AGREEMENT:.2f}"
            print(f"{path}: not marked ({why})")
            continue
        made_by = (
            "made by " + "; ".join(f"{_display(f)}, weights hash {h[:12]}" for f, h in models)
            if models
            else f"no model below {root} has a weights hash starting with {found.model_id} (search elsewhere: "
            "--models DIR)"
        )
        print(
            f"{path}: marked, model id {found.model_id} (marker agreement {found.agreement:.2f}, id votes "
            f"{found.id_agreement:.2f}): {made_by}"
        )
    return 0 if all_marked else 1
