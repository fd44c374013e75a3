"""Images that carry their own recipe: generation parameters embedded in PNG text chunks.

Every PNG written by ``ldm sample`` holds two ``tEXt``/``iTXt`` chunks:

- ``ldm``: JSON with everything needed to regenerate the image (class and id, seed, sampler, steps, guidance,
  negative class, sizes, the batch it was generated in, model path and weights hash);
- ``parameters``: the same in one human-readable line, like AUTOMATIC1111's web UI writes.

    params = read_parameters("samples/smiling-seed3.png")   # the ``ldm`` dict
    ldm sample --from-image samples/smiling-seed3.png --out again/   # same pixels on CPU

The image's pixels depend (at the 1e-6 level, enough to flip a rounded pixel now and then) on its batch mates,
because CPU kernels sum in batch-dependent order. So the metadata records the whole batch and regeneration
recomputes it exactly.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldm.errors import UserError

if TYPE_CHECKING:
    import torch
    from PIL import Image

FORMAT_VERSION = 1
JSON_KEY = "ldm"
TEXT_KEY = "parameters"


def weights_hash(*modules: torch.nn.Module | None) -> str:
    """SHA-256 (hex) of the weights of ``modules``: parameter and buffer names, dtypes, shapes and bytes, in order.

    Depends only on the weights, not on file format or the folder they were loaded from; ``None`` entries are
    skipped. Identical weights give identical hashes on every device (tensors are hashed on CPU).
    """
    import torch

    h = hashlib.sha256()
    for k, m in enumerate(modules):
        if m is None:
            continue
        h.update(f"module{k}:{type(m).__name__}".encode())
        for name, t in m.state_dict().items():
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash its raw 16-bit words
                t = t.view(torch.int16)
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def format_parameters(p: dict[str, Any]) -> str:
    """One human-readable line of the main settings (the ``parameters`` chunk)."""
    neg = p.get("negative_class")
    parts = [
        f"class: {p.get('class')} ({p.get('class_id')})",
        f"negative class: {neg} ({p.get('negative_class_id')})" if neg is not None else "negative class: none",
        f"seed: {p.get('seed')}",
        f"sampler: {p.get('scheduler')}",
        f"steps: {p.get('num_inference_steps')}",
        f"guidance: {p.get('guidance_scale')}",
        f"size: {p.get('width')}x{p.get('height')}",
        f"model: {(p.get('model') or {}).get('path')}",
        f"model hash: {str((p.get('model') or {}).get('weights_hash', ''))[:12]}",
    ]
    return ", ".join(parts)


def png_bytes(image: Image.Image, params: dict[str, Any]) -> bytes:
    """PNG bytes of ``image`` with ``params`` embedded (``ldm`` JSON chunk + ``parameters`` text chunk)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(JSON_KEY, json.dumps(params, sort_keys=True))
    info.add_itxt(TEXT_KEY, params.get("text") or format_parameters(params))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png_with_parameters(image: Image.Image, path: str | Path, params: dict[str, Any]) -> Path:
    """Write ``image`` to ``path`` (atomically) with ``params`` embedded; returns the path."""
    from ldm.utils import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, png_bytes(image, params))
    return path


def read_parameters(png: str | Path | Image.Image) -> dict[str, Any]:
    """The ``ldm`` parameters embedded in a PNG (path or PIL image). Raises UserError if there are none."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(png, (str, Path)):
        p = Path(png)
        if not p.is_file():
            raise UserError(f"image not found: {p}")
        try:
            with Image.open(p) as im:
                im.load()
                text = dict(im.text) if hasattr(im, "text") else dict(im.info)
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"{p} is not a readable image: {e}") from None
        where = str(p)
    else:
        text = dict(getattr(png, "text", None) or png.info)
        where = "the image"
    raw = text.get(JSON_KEY)
    if raw is None:
        raise UserError(
            f"{where} carries no generation parameters (no '{JSON_KEY}' PNG text chunk); only PNGs written by "
            "`ldm sample` (or the app) can be regenerated"
        )
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"the '{JSON_KEY}' chunk of {where} is not valid JSON: {e}") from None
    if not isinstance(params, dict) or params.get("format_version") is None:
        raise UserError(f"the '{JSON_KEY}' chunk of {where} is not a generation record")
    if params["format_version"] > FORMAT_VERSION:
        raise UserError(
            f"{where} was written by a newer version (parameters format {params['format_version']}, "
            f"this version reads {FORMAT_VERSION})"
        )
    return params
