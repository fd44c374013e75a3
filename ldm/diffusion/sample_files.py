"""Sample folders: PNGs that carry their own recipe, written by ``ldm sample`` and the app, read back by
``ldm sample --from-image``.

    files = sample_to_folder(pipe, ["smiling", "sleepy"], "samples/", SamplingConfig(num_images=4, seed=0))
    params = read_parameters("samples/smiling-seed3.png")   # the ``ldm`` dict
    image = regenerate(params, pipe)                          # the same pixels on the same device and dtype

Every PNG holds two ``iTXt`` chunks:

- ``ldm``: JSON with everything needed to regenerate the image (class and id, seed, sampler, steps, guidance,
  negative class, sizes, the batch it was generated in, model path and weights hash);
- ``parameters``: the same in one human-readable line, like AUTOMATIC1111's web UI writes.

The image's pixels depend (at the 1e-6 level, enough to flip a rounded pixel now and then) on its batch mates,
because CPU kernels sum in batch-dependent order. So the metadata records the whole batch and regeneration
recomputes it exactly.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ldm.errors import UserError
from ldm.utils import slugify

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ldm.config import SamplingConfig
    from ldm.diffusion.pipeline import ClassConditionalLatentDiffusionPipeline

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


# ----------------------------------------------------------------------------------------------------
# writing a sample folder


@dataclass
class SampleFiles:
    """What :func:`sample_to_folder` wrote."""

    images: list[Path]
    grid: Optional[Path] = None
    snapshots: Optional[Path] = None
    records: list[dict[str, Any]] = field(default_factory=list)


def model_identity(pipe: ClassConditionalLatentDiffusionPipeline, path: str | Path | None = None) -> dict[str, Any]:
    """``{"path", "name", "weights_hash", "unet_hash", "vae_hash", "class_names"}`` of a loaded pipeline.

    The hashes are computed once per pipeline object (weights do not change while sampling) and cached on it.
    """
    from ldm.run_folder import RunFolder

    cached = getattr(pipe, "_ldm_identity_hashes", None)
    if cached is None:
        cached = {
            "weights_hash": weights_hash(pipe.unet, pipe.vae),
            "unet_hash": weights_hash(pipe.unet),
            "vae_hash": weights_hash(pipe.vae) if pipe.vae is not None else None,
        }
        pipe._ldm_identity_hashes = cached
    if path is None:
        path = getattr(pipe.config, "_name_or_path", None) or getattr(pipe, "name_or_path", None)
    p = Path(path).resolve() if path else None
    name = None
    if p is not None:
        name = RunFolder.display_name(p)
    return {"path": str(p) if p else None, "name": name, **cached, "class_names": pipe.class_names}


def _sample_batch(
    pipe: ClassConditionalLatentDiffusionPipeline,
    class_ids: list[int],
    seeds: list[int],
    negative_class_ids: list[int] | None,
    sampling: SamplingConfig,
    watermark: bool = True,
    **kwargs: Any,
) -> Any:
    """One batch as :func:`sample_to_folder` generates it and :func:`regenerate` recomputes it (``kwargs``: the
    pipeline's callback, snapshot and cancellation arguments). With ``watermark`` every image carries the invisible
    mark of the model (:mod:`ldm.watermark`): here, so that a regenerated image is marked like the original."""
    result = pipe(
        class_ids,
        num_inference_steps=sampling.num_inference_steps,
        guidance_scale=sampling.guidance_scale,
        negative_class_labels=negative_class_ids,
        seeds=seeds,
        scheduler=sampling.scheduler,
        **kwargs,
    )
    if watermark:
        from ldm.watermark import encode, model_id

        mid = model_id(model_identity(pipe)["weights_hash"])
        result.images = [encode(image, mid) for image in result.images]
    return result


def _resolve_request(
    pipe: ClassConditionalLatentDiffusionPipeline, classes: Sequence[str | int], sampling: SamplingConfig
) -> tuple[list[int], int | None]:
    """Class ids (repeats dropped) and negative class id of a request, checked before any work."""
    from ldm.diffusion.pipeline import list_class_names, resolve_class
    from ldm.diffusion.schedulers import make_scheduler

    if sampling.num_images < 1:
        raise UserError(f"num_images must be >= 1, got {sampling.num_images}")
    if sampling.batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {sampling.batch_size}")
    names = pipe.class_names
    if not classes:
        raise UserError(f"give at least one class; known classes: {list_class_names(names)}")
    ids: list[int] = []
    for c in classes:
        k = resolve_class(c, names)
        if k not in ids:
            ids.append(k)
    neg_id = resolve_class(sampling.negative_class, names) if sampling.negative_class not in (None, "") else None
    make_scheduler(sampling.scheduler, pipe.scheduler.config)  # an unknown sampler fails before any image
    return ids, neg_id


def _image_record(
    pipe: ClassConditionalLatentDiffusionPipeline,
    sampling: SamplingConfig,
    class_id: int,
    negative_class_id: int | None,
    seed: int,
    image: Image.Image,
    batch: dict[str, Any],
    identity: dict[str, Any],
) -> dict[str, Any]:
    """The ``ldm`` record of one generated image (with its ``text`` line)."""
    from ldm.watermark import record as watermark_record

    names = pipe.class_names
    rec = {
        "format_version": FORMAT_VERSION,
        "kind": "image",
        "class": names[class_id],
        "class_id": class_id,
        "negative_class": names[negative_class_id] if negative_class_id is not None else None,
        "negative_class_id": negative_class_id,
        "seed": seed,
        "scheduler": sampling.scheduler,
        "num_inference_steps": sampling.num_inference_steps,
        "guidance_scale": sampling.guidance_scale,
        "width": image.width,
        "height": image.height,
        "latent_shape": list(pipe.latent_shape),
        "scaling_factor": float(pipe.config.scaling_factor),
        "batch": batch,
        "device": str(pipe.unet.device),
        "dtype": str(pipe.unet.dtype).replace("torch.", ""),
        "model": identity,
        "watermark": watermark_record(image, identity["weights_hash"]),
    }
    rec["text"] = format_parameters(rec)
    return rec


def sample_to_folder(
    pipe: ClassConditionalLatentDiffusionPipeline,
    classes: Sequence[str | int],
    out: str | Path,
    sampling: SamplingConfig | None = None,
    *,
    snapshots: bool = False,
    model_path: str | Path | None = None,
    callback: Callable[[int, int, torch.Tensor], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SampleFiles:
    """Generate ``sampling.num_images`` images per class with ``pipe`` and write them into ``out`` as PNGs carrying
    their parameters.

    ``sampling`` (default :class:`ldm.config.SamplingConfig`) gives the sampler, steps, guidance, negative class,
    seed, images per class, batch size and snapshot timesteps. Image j of every class uses seed ``seed + j`` (columns
    of the grid share their starting noise). Writes ``<class>-seed<S>.png`` per image, ``grid.png`` (one row per
    class) when there are several images, and ``snapshots.png`` (first image of each class) with ``snapshots=True``.
    Images are generated in batches of ``sampling.batch_size``; each PNG records its batch so :func:`regenerate`
    reproduces its exact pixels. ``callback`` and ``should_stop`` are passed to the pipeline (see its ``__call__``).
    """
    from ldm.config import SamplingConfig
    from ldm.diffusion.pipeline import Snapshots

    sampling = sampling or SamplingConfig()
    ids, neg_id = _resolve_request(pipe, classes, sampling)
    names, seed = pipe.class_names, sampling.seed
    from ldm.utils import check_output_folder

    out = check_output_folder(out)  # before any image is generated
    out.mkdir(parents=True, exist_ok=True)
    identity = model_identity(pipe, model_path)

    jobs = [(k, seed + j) for k in ids for j in range(sampling.num_images)]  # class-major: row k of the grid
    images: list[Image.Image] = []
    files = SampleFiles(images=[])
    snaps: list[Snapshots] = []
    for start in range(0, len(jobs), sampling.batch_size):
        chunk = jobs[start : start + sampling.batch_size]
        cids = [k for k, _ in chunk]
        seeds = [s for _, s in chunk]
        negs = [neg_id] * len(chunk) if neg_id is not None else None
        first = [i for i, (_, s) in enumerate(chunk) if s == seed] if snapshots else None
        result = _sample_batch(
            pipe,
            cids,
            seeds,
            negs,
            sampling,
            callback=callback,
            snapshot_timesteps=sampling.snapshot_timesteps if first else None,
            snapshot_image_indices=first,
            should_stop=should_stop,
        )
        if result.snapshots is not None:
            snaps.append(result.snapshots)
        for i, (k, s) in enumerate(chunk):
            batch = {"class_ids": cids, "seeds": seeds, "negative_class_ids": negs, "index": i}
            rec = _image_record(pipe, sampling, k, neg_id, s, result.images[i], batch, identity)
            files.images.append(
                save_png_with_parameters(result.images[i], out / f"{slugify(names[k])}-seed{s}.png", rec)
            )
            files.records.append(rec)
            images.append(result.images[i])

    summary = {
        "format_version": FORMAT_VERSION,
        "classes": [names[k] for k in ids],
        "class_ids": ids,
        "negative_class": names[neg_id] if neg_id is not None else None,
        "seeds": [seed + j for j in range(sampling.num_images)],
        "scheduler": sampling.scheduler,
        "num_inference_steps": sampling.num_inference_steps,
        "guidance_scale": sampling.guidance_scale,
        "model": identity,
    }
    if len(jobs) > 1:
        files.grid = _write_grid(out / "grid.png", images, summary, sampling)
    if snaps:
        steps = len(result.timesteps)
        files.snapshots = _write_snapshots(out / "snapshots.png", Snapshots.concat(snaps), summary, sampling, steps)
    return files


def _write_grid(path: Path, images: list[Image.Image], summary: dict[str, Any], sampling: SamplingConfig) -> Path:
    """``grid.png``: one row per class, one column per seed, carrying the request's summary."""
    from ldm.figures import labelled_grid

    n, first = sampling.num_images, sampling.seed
    rows = [images[r * n : (r + 1) * n] for r in range(len(summary["classes"]))]
    text = (
        f"grid: classes {', '.join(summary['classes'])}; seeds {first}..{first + n - 1}; "
        f"{sampling.scheduler} {sampling.num_inference_steps} steps; guidance {sampling.guidance_scale:g}"
        + (f"; negative class {summary['negative_class']}" if summary["negative_class"] is not None else "")
    )
    return save_png_with_parameters(
        labelled_grid(rows, summary["classes"]), path, {**summary, "kind": "grid", "text": text}
    )


def _write_snapshots(
    path: Path, snapshots: Any, summary: dict[str, Any], sampling: SamplingConfig, total_steps: int
) -> Path:
    """``snapshots.png``: the first image of each class at the snapshot timesteps (noisy latent and predicted x0)."""
    from ldm.figures import snapshot_figure

    fig = snapshot_figure(
        snapshots,
        list(range(len(snapshots.image_indices))),
        labels=[f"{c} seed {sampling.seed}" for c in summary["classes"]],
        title=f"{sampling.scheduler}, {total_steps} steps, guidance {sampling.guidance_scale:g}: "
        "decoded noisy latent, predicted x0",
    )
    record = {**summary, "kind": "snapshots", "snapshot_timesteps": snapshots.timesteps, "text": "snapshots"}
    return save_png_with_parameters(fig, path, record)


# ----------------------------------------------------------------------------------------------------
# reading one back


def regenerate(params: dict[str, Any], pipe: ClassConditionalLatentDiffusionPipeline) -> Image.Image:
    """Recompute the image described by ``params`` (from :func:`read_parameters`) with ``pipe``.

    The whole batch the image was generated in is recomputed, so on the same device and dtype the pixels are
    identical. Raises UserError when the record is not a single image's, or does not fit the model.
    """
    if params.get("kind") != "image":
        raise UserError(
            f"this PNG is a {params.get('kind', 'unknown')} figure, not a single generated image; "
            "give one of the <class>-seed<S>.png files"
        )
    batch = params.get("batch") or {
        "class_ids": [params["class_id"]],
        "seeds": [params["seed"]],
        "negative_class_ids": None if params.get("negative_class_id") is None else [params["negative_class_id"]],
        "index": 0,
    }
    names = pipe.class_names
    for k in list(batch["class_ids"]) + list(batch.get("negative_class_ids") or []):
        if not 0 <= int(k) < len(names):
            raise UserError(f"the image was made with class id {k}, but this model has {len(names)} classes")
    if params.get("class") is not None and names[int(params["class_id"])] != params["class"]:
        raise UserError(
            f"the image was made for class {params['class']!r} (id {params['class_id']}), but in this model "
            f"id {params['class_id']} is {names[int(params['class_id'])]!r}"
        )
    from ldm.config import SamplingConfig

    negs = batch.get("negative_class_ids")
    sampling = SamplingConfig(
        scheduler=params["scheduler"],
        num_inference_steps=int(params["num_inference_steps"]),
        guidance_scale=float(params["guidance_scale"]),
    )
    class_ids, seeds = [int(k) for k in batch["class_ids"]], [int(s) for s in batch["seeds"]]
    negs = None if negs is None else [int(k) for k in negs]
    # images written before the watermark existed record none: they come back unmarked, pixel for pixel
    result = _sample_batch(pipe, class_ids, seeds, negs, sampling, watermark=bool(params.get("watermark")))
    return result.images[int(batch["index"])]
