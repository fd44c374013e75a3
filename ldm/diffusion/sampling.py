"""Sampling: class-conditional generation with classifier-free guidance, a negative class and timestep snapshots.

    from ldm.diffusion.sampling import load_pipeline, generate, make_scheduler
    pipe = load_pipeline("runs/faces")
    result = generate(pipe.unet, pipe.vae, make_scheduler("dpm++", pipe.scheduler.config), [0, 0, 2],
                      null_class_id=pipe.null_class_id, scaling_factor=pipe.config.scaling_factor, seeds=[0, 1, 2])
    result.images[0].save("face.png")

One entry point (:func:`generate`) serves the CLI (``ldm sample``), the exported diffusers pipeline
(:mod:`ldm.diffusion.pipeline`), the app and the notebooks, so all of them give the same pixels for the same seed and settings.
The denoising loop is written out in full, diffusers-style: the scheduler owns the update rule, this module owns
guidance, seeding, snapshots, progress and cancellation.
"""

from __future__ import annotations

import difflib
import inspect
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ldm.choices import SCHEDULERS
from ldm.errors import UserError
from ldm.run_folder import RunFolder

if TYPE_CHECKING:  # keep ``import ldm.diffusion.sampling`` cheap: torch/diffusers load inside the functions
    import torch
    from PIL import Image


# the original project's snapshot timesteps (columns of its figure)
DEFAULT_SNAPSHOT_TIMESTEPS: tuple[int, ...] = (999, 700, 500, 200, 150, 120, 100, 80, 60, 40, 20, 0)


class SamplingCancelled(Exception):
    """Raised by :func:`generate` when ``should_stop()`` returned True between two denoising steps."""


@dataclass
class Snapshots:
    """Decoded intermediate states of a sampling run.

    ``noisy`` and ``pred_x0`` are float tensors ``(S, B, C, H, W)`` in [-1, 1] (S snapshot steps, B images):
    the noisy latent at that step decoded, and the model's prediction of the clean latent decoded.
    ``timesteps[s]`` is the sampler's timestep actually used, ``requested[s]`` the timesteps mapped to it.
    """

    timesteps: list[int]
    step_indices: list[int]
    requested: list[list[int]]
    noisy: torch.Tensor
    pred_x0: torch.Tensor
    image_indices: list[int] = field(default_factory=list)  # batch index of each of the B images


@dataclass
class SampleResult:
    """Output of :func:`generate`.

    ``images``: one PIL image per class id; ``pixels``: float tensor ``(B, C, H, W)`` in [-1, 1] (CPU, float32),
    the same pixels before quantisation; ``latents``: final **scaled** latents ``(B, c, h, w)`` (CPU, float32);
    ``snapshots``: :class:`Snapshots` or None when none were requested.
    """

    images: list[Image.Image]
    pixels: torch.Tensor
    latents: torch.Tensor
    snapshots: Optional[Snapshots] = None
    timesteps: list[int] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# schedulers and class names


def make_scheduler(name: str, train_scheduler_config: Any) -> Any:
    """Build the inference scheduler ``name`` from the training scheduler's config (a dict or FrozenDict).

    Accepted names: the keys of :data:`ldm.choices.SCHEDULERS`. The noise schedule
    (betas, number of training steps, prediction type) comes from the training config so sampling matches training.
    """
    import diffusers

    key = (name or "").strip().lower()
    if key not in SCHEDULERS:
        raise UserError(f"unknown scheduler {name!r}; accepted: {', '.join(SCHEDULERS)}")
    cls_name, overrides = SCHEDULERS[key]
    cfg = dict(train_scheduler_config or {})
    for k in ("_class_name", "_diffusers_version"):
        cfg.pop(k, None)
    # Latents are scaled to unit variance, so clipping x0 to [-1, 1] (DDPM's default) would distort them.
    extra: dict[str, Any] = {"clip_sample": False, "thresholding": False}
    if cfg.get("prediction_type") == "v_prediction":
        # v-prediction is well conditioned at the last training timestep (SNR ~ 0), so start there: "leading"
        # spacing starts at 960 of 1000 and leaves signal the model never saw (Lin et al. 2023, arXiv:2305.08891).
        extra["timestep_spacing"] = "trailing"
    else:
        # Epsilon prediction starts one stride below the last timestep: its x0 estimate divides by sqrt(alpha_bar),
        # 5e-5 at t=999 of the cosine schedule, which turns small eps errors of a young model into huge latents.
        extra["timestep_spacing"] = "leading"
    return getattr(diffusers, cls_name).from_config(cfg, **{**extra, **overrides})


def normalize_class_name(name: str) -> str:
    return " ".join(str(name).split()).casefold()


def resolve_class(name: str | int, class_names: Sequence[str]) -> int:
    """Label id of ``name`` among ``class_names`` (label order), ignoring case and extra whitespace.

    An int is taken as a label id and range-checked; a string is always a name (folder names like "1" stay names).
    Raises UserError for an empty or unknown name, listing the closest known classes.
    """
    names = list(class_names)
    if isinstance(name, int) and not isinstance(name, bool):
        if 0 <= name < len(names):
            return name
        raise UserError(f"class id {name} is out of range; this model has {len(names)} classes (0..{len(names) - 1})")
    key = normalize_class_name(name or "")
    if not key:
        raise UserError(f"empty class name; known classes: {_list_names(names)}")
    table = {normalize_class_name(n): i for i, n in enumerate(names)}
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=5, cutoff=0.4)
    hint = f"closest: {', '.join(names[table[c]] for c in close)}; " if close else ""
    raise UserError(f"unknown class {str(name).strip()!r}; {hint}known classes: {_list_names(names)}")


def _list_names(names: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def map_snapshot_timesteps(requested: Sequence[int], timesteps: Sequence[float]) -> dict[int, list[int]]:
    """Map each requested timestep to the index of the nearest sampler step (first occurrence).

    Returns ``{step_index: [requested timesteps mapped there]}`` in step order; several requests may share a step.
    """
    ts = [float(t) for t in timesteps]
    out: dict[int, list[int]] = {}
    for r in requested:
        best = min(range(len(ts)), key=lambda i: (abs(ts[i] - r), i))
        out.setdefault(best, []).append(int(r))
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------------------------------
# the sampling loop


def _alpha_bar(scheduler: Any, t: Any) -> float:
    """Training alpha-bar at (possibly fractional) timestep ``t``, linear interpolation between integer steps."""
    ac = scheduler.alphas_cumprod
    tf = float(t)
    lo = max(0, min(len(ac) - 1, math.floor(tf)))
    hi = min(len(ac) - 1, lo + 1)
    w = tf - lo
    return float(ac[lo]) * (1 - w) + float(ac[hi]) * w


def _predict_x0(scheduler: Any, model_input: torch.Tensor, model_output: torch.Tensor, t: Any) -> torch.Tensor:
    """x0 from the (variance-preserving) model input and the guided model output at timestep t (DDPM eq. 15)."""
    a = _alpha_bar(scheduler, t)
    pred = scheduler.config.get("prediction_type", "epsilon")
    if pred == "v_prediction":  # Salimans & Ho 2022, section 4
        return a**0.5 * model_input - (1 - a) ** 0.5 * model_output
    if pred == "sample":
        return model_output
    return (model_input - (1 - a) ** 0.5 * model_output) / a**0.5


def decode_latents(vae: Any, latents: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Scaled latents ``(B, c, h, w)`` -> images ``(B, C, H, W)`` float32 on CPU in [-1, 1].

    With ``vae=None`` the "image" is the first (up to 3) latent channels, clamped: a cheap stand-in for tests.
    """
    import torch

    if vae is None:
        return latents[:, : min(3, latents.shape[1])].float().clamp(-1, 1).cpu()
    dtype = next(vae.parameters()).dtype
    with torch.no_grad():
        images = vae.decode(latents.to(dtype) / scaling_factor).sample
    return images.float().clamp(-1, 1).cpu()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Float images ``(B, C, H, W)`` in [-1, 1] (C = 1 or 3) -> PIL images (L or RGB), rounded to uint8."""
    from PIL import Image

    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to("cpu").byte().permute(0, 2, 3, 1).numpy()
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in arr]
    if arr.shape[-1] == 2:  # not a real image: show the first channel
        return [Image.fromarray(a[..., 0], mode="L") for a in arr]
    return [Image.fromarray(a[..., :3], mode="RGB") for a in arr]


def default_latent_shape(unet: Any) -> tuple[int, int, int]:
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (int(unet.config.in_channels), int(h), int(w))


def generate(
    unet: Any,
    vae: Any,
    scheduler: Any,
    class_ids: list[int],
    *,
    null_class_id: int,
    scaling_factor: float,
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
    negative_class_ids: list[int] | None = None,
    seeds: list[int] | None = None,
    latent_shape: tuple[int, int, int] | None = None,
    callback: Callable[[int, int, torch.Tensor], Any] | None = None,
    snapshot_timesteps: Sequence[int] | None = None,
    should_stop: Callable[[], bool] | None = None,
    snapshot_image_indices: Sequence[int] | None = None,
    generators: list[torch.Generator] | None = None,
    decode: bool = True,
) -> SampleResult:
    """Generate one image per entry of ``class_ids`` with classifier-free guidance.

    Args:
        unet: diffusers ``UNet2DModel`` with ``num_class_embeds = num_classes + 1`` (its device/dtype are used).
        vae: diffusers ``AutoencoderKL`` / ``AutoencoderTiny`` decoding to [-1, 1], or None
            (see :func:`decode_latents`).
        scheduler: an inference scheduler (see :func:`make_scheduler`); its timesteps are set here.
        class_ids: label ids, one per image.
        null_class_id: the id of the "no class" embedding (``num_classes``), the unconditional branch of CFG.
        scaling_factor: latent scale; latents are divided by it before ``vae.decode``.
        num_inference_steps: denoising steps of the sampler.
        guidance_scale: CFG scale w in ``eps_u + w (eps_c - eps_u)`` (Ho & Salimans 2022);
            1 = a single conditional pass.
        negative_class_ids: per-image class to steer away from: replaces the null class in the unconditional branch.
            One id for all images, or one per image; None = the null class.
        seeds: one seed per image (default ``0..B-1``); image i draws all its noise from ``torch.Generator`` seeded
            ``seeds[i]``, so it does not depend on its batch mates.
        latent_shape: ``(c, h, w)`` of the latent; default from the UNet config.
        callback: ``callback(step_index, timestep, latents)`` after each step (latents scaled, ``(B, c, h, w)``).
        snapshot_timesteps: timesteps (0..num_train_timesteps-1) to snapshot, mapped to the nearest sampler step;
            all snapshots are decoded in one VAE batch after sampling.
        should_stop: polled before each step; when it returns True, :class:`SamplingCancelled` is raised.
        snapshot_image_indices: which images to snapshot (default: all).
        generators: explicit per-image CPU/device generators instead of ``seeds``.
        decode: False skips the VAE (``images`` empty, ``pixels`` empty): for benchmarks and latent-only callers.

    Returns:
        :class:`SampleResult` (images, pixels in [-1, 1], scaled latents, snapshots).
    """
    import torch

    b = len(class_ids)
    if b == 0:
        raise UserError("no images requested (class_ids is empty)")
    if num_inference_steps < 1:
        raise UserError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if guidance_scale < 0:
        raise UserError(f"guidance_scale must be >= 0 (1 = no guidance), got {guidance_scale}")
    num_embeds = getattr(unet.config, "num_class_embeds", None)
    for c in list(class_ids) + list(negative_class_ids or []) + [null_class_id]:
        if num_embeds is not None and not 0 <= int(c) < num_embeds:
            raise UserError(f"class id {c} is out of range for a UNet with {num_embeds} class embeddings")
    if negative_class_ids is not None:
        negative_class_ids = list(negative_class_ids)
        if len(negative_class_ids) == 1:
            negative_class_ids = negative_class_ids * b
        if len(negative_class_ids) != b:
            raise UserError(f"negative_class_ids: give 1 or {b} ids, got {len(negative_class_ids)}")

    param = next(unet.parameters())  # diffusers models also expose .device/.dtype; any nn.Module works here
    device, dtype = param.device, param.dtype
    shape = tuple(latent_shape) if latent_shape is not None else default_latent_shape(unet)
    if generators is None:
        seeds = list(range(b)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != b:
            raise UserError(f"seeds: give one per image ({b}), got {len(seeds)}")
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    elif len(generators) != b:
        raise UserError(f"generators: give one per image ({b}), got {len(generators)}")

    scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = scheduler.timesteps
    # Per-image noise from its own generator, drawn on the generator's device (CPU by default), then moved:
    # the same seed gives the same start on every device and in every batch.
    noise = torch.stack([torch.randn(shape, generator=g, device=g.device, dtype=torch.float32) for g in generators])
    latents = (noise.to(device) * scheduler.init_noise_sigma).to(dtype)

    do_cfg = guidance_scale != 1.0
    cond = torch.tensor([int(c) for c in class_ids], device=device, dtype=torch.long)
    if do_cfg:
        uncond_ids = negative_class_ids if negative_class_ids is not None else [null_class_id] * b
        labels = torch.cat([torch.tensor(uncond_ids, device=device, dtype=torch.long), cond])
    else:
        labels = cond

    snap_map: dict[int, list[int]] = {}
    if snapshot_timesteps:
        snap_map = map_snapshot_timesteps(snapshot_timesteps, timesteps.tolist())
    snap_idx = list(range(b)) if snapshot_image_indices is None else [int(i) for i in snapshot_image_indices]
    snap_noisy: list[torch.Tensor] = []
    snap_x0: list[torch.Tensor] = []

    # Stochastic schedulers (ddpm, euler_a) accept a list of generators, one per batch element.
    step_kwargs: dict[str, Any] = {}
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = generators

    with torch.no_grad():
        for i, t in enumerate(timesteps):
            if should_stop is not None and should_stop():
                raise SamplingCancelled(f"sampling cancelled at step {i} of {len(timesteps)}")
            model_input = scheduler.scale_model_input(latents, t)
            unet_in = torch.cat([model_input, model_input]) if do_cfg else model_input
            out = unet(unet_in, t, class_labels=labels).sample
            if do_cfg:
                eps_u, eps_c = out.chunk(2)
                out = eps_u + guidance_scale * (eps_c - eps_u)
            step = scheduler.step(out, t, latents, return_dict=True, **step_kwargs)
            if i in snap_map:
                x0 = getattr(step, "pred_original_sample", None)
                if x0 is None:
                    x0 = _predict_x0(scheduler, model_input.float(), out.float(), t)
                snap_noisy.append(model_input[snap_idx].float())
                snap_x0.append(x0[snap_idx].float())
            latents = step.prev_sample
            if callback is not None:
                callback(i, int(round(float(t))), latents)

    latents = latents.float()
    if decode:
        pixels = decode_latents(vae, latents, scaling_factor)
        images = to_pil(pixels)
    else:
        pixels, images = torch.empty(0), []
    snapshots = None
    if snap_map:
        s, n = len(snap_noisy), len(snap_idx)
        # one VAE batch for every snapshot (the original decoded each separately)
        flat = torch.cat([torch.cat(snap_noisy), torch.cat(snap_x0)])
        dec = decode_latents(vae, flat, scaling_factor)
        dec = dec.view(2, s, n, *dec.shape[1:])
        steps = list(snap_map)
        snapshots = Snapshots(
            timesteps=[int(round(float(timesteps[k]))) for k in steps],
            step_indices=steps,
            requested=[snap_map[k] for k in steps],
            noisy=dec[0],
            pred_x0=dec[1],
            image_indices=snap_idx,
        )
    return SampleResult(
        images=images,
        pixels=pixels,
        latents=latents.cpu(),
        snapshots=snapshots,
        timesteps=[int(round(float(t))) for t in timesteps],
    )


# ----------------------------------------------------------------------------------------------------
# figures


def snapshot_figure(
    snapshots: Snapshots,
    image_index: int | Sequence[int] = 0,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    cell_inches: float = 1.2,
    dpi: int = 100,
) -> Image.Image:
    """Figure of the snapshots of one or more images: per image, a row of decoded noisy latents and below it a row
    of predicted clean images (x0), one column per snapshot timestep (titled with it). Returns an RGB PIL image.

    ``image_index`` indexes the snapshotted images (position in ``snapshots.image_indices``).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from PIL import Image

    idxs = [image_index] if isinstance(image_index, int) else list(image_index)
    s = len(snapshots.timesteps)
    rows = 2 * len(idxs)
    fig, axes = plt.subplots(
        rows, s, figsize=(cell_inches * s + 1.2, cell_inches * rows + 0.6), squeeze=False, dpi=dpi
    )
    for r, k in enumerate(idxs):
        name = labels[r] if labels is not None and r < len(labels) else None
        for j in range(s):
            for row, (tensor, kind) in enumerate(((snapshots.noisy, "noisy"), (snapshots.pred_x0, "predicted x0"))):
                ax = axes[2 * r + row][j]
                img = ((tensor[j, k].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
                if img.shape[-1] == 1:
                    ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img[..., :3])
                ax.set_xticks([])
                ax.set_yticks([])
                if 2 * r + row == 0:
                    ax.set_title(f"t={snapshots.timesteps[j]}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(f"{name}\n{kind}" if name else kind, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def make_grid(
    images: Sequence[Image.Image], rows: int, pad: int = 2, labels: Sequence[str] | None = None
) -> Image.Image:
    """Paste equally sized images row-major into a grid of ``rows`` rows (white padding).

    With ``labels`` (one per row) a left margin holds each row's label.
    """
    from PIL import Image, ImageDraw

    if not images:
        raise ValueError("make_grid: no images")
    cols = math.ceil(len(images) / rows)
    w, h = images[0].size
    mode = "RGB" if any(im.mode != "L" for im in images) or labels else "L"
    margin = 0
    if labels:
        draw0 = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        margin = 6 + max(int(draw0.textlength(str(t))) for t in labels)
    grid = Image.new(mode, (margin + cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), "white")
    draw = ImageDraw.Draw(grid)
    for n, im in enumerate(images):
        r, c = divmod(n, cols)
        grid.paste(im.convert(mode), (margin + pad + c * (w + pad), pad + r * (h + pad)))
    for r, t in enumerate(labels or []):
        draw.text((3, pad + r * (h + pad) + max(0, h // 2 - 6)), str(t), fill="black")
    return grid


# ----------------------------------------------------------------------------------------------------
# loading


def find_pipeline_folder(path: str | Path) -> Path:
    """The pipeline folder of a run folder (``<run>/pipeline``) or a pipeline folder itself."""
    return RunFolder.find_pipeline(path)


def load_pipeline(path: str | Path, device: str | None = None, dtype: Any = None) -> Any:
    """Load a :class:`~ldm.diffusion.pipeline.ClassConditionalLatentDiffusionPipeline` from a run or pipeline folder.

    ``device`` defaults to :func:`ldm.device.default_device`; ``dtype`` to float32.
    """
    import torch

    from ldm.device import default_device
    from ldm.diffusion.pipeline import ClassConditionalLatentDiffusionPipeline

    folder = find_pipeline_folder(path)
    from diffusers.utils import logging as diffusers_logging

    bar = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # no "Loading pipeline components" bar in CLI output
    try:
        pipe = ClassConditionalLatentDiffusionPipeline.from_pretrained(folder, dtype=dtype or torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"could not load the pipeline in {folder}: {e}") from None
    finally:
        if bar:
            diffusers_logging.enable_progress_bar()
    pipe.to(device or default_device())
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------------------------------
# sampling to files, with provenance


@dataclass
class SampleFiles:
    """What :func:`sample_to_folder` wrote."""

    images: list[Path]
    grid: Optional[Path] = None
    snapshots: Optional[Path] = None
    records: list[dict[str, Any]] = field(default_factory=list)


def slugify(name: str) -> str:
    """A file-name-safe form of a class name (letters, digits, ``-`` and ``_``)."""
    out = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(name).strip())
    return "-".join(p for p in out.split("-") if p) or "class"


def model_identity(pipe: Any, path: str | Path | None = None) -> dict[str, Any]:
    """``{"path", "name", "weights_hash", "unet_hash", "vae_hash", "class_names"}`` of a loaded pipeline.

    The hashes are computed once per pipeline object (weights do not change while sampling) and cached on it.
    """
    from ldm.diffusion.provenance import weights_hash

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


def sample_to_folder(
    pipe: Any,
    classes: Sequence[str | int],
    out: str | Path,
    *,
    num_images: int = 4,
    scheduler: str = "dpm++",
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
    negative_class: str | int | None = None,
    seed: int = 0,
    snapshots: bool = False,
    snapshot_timesteps: Sequence[int] = DEFAULT_SNAPSHOT_TIMESTEPS,
    batch_size: int = 16,
    model_path: str | Path | None = None,
    callback: Callable[[int, int, torch.Tensor], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SampleFiles:
    """Generate ``num_images`` images per class and write them into ``out`` as PNGs carrying their parameters.

    Image j of every class uses seed ``seed + j`` (columns of the grid share their starting noise). Writes
    ``<class>-seed<S>.png`` per image, ``grid.png`` (one row per class) when there are several images, and
    ``snapshots.png`` (first image of each class) with ``snapshots=True``. Images are generated in batches of
    ``batch_size``; each PNG records its batch so :func:`regenerate` reproduces its exact pixels.
    """
    from ldm.diffusion.provenance import format_parameters, save_png_with_parameters

    if num_images < 1:
        raise UserError(f"num_images must be >= 1, got {num_images}")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if not classes:
        raise UserError(f"give at least one class; known classes: {_list_names(pipe.class_names)}")
    names = pipe.class_names
    ids: list[int] = []
    for c in classes:  # resolve all names before any work, and drop repeats
        k = resolve_class(c, names)
        if k not in ids:
            ids.append(k)
    neg_id = resolve_class(negative_class, names) if negative_class not in (None, "") else None
    make_scheduler(scheduler, pipe.scheduler.config)  # validate the name before loading anything else
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    identity = model_identity(pipe, model_path)
    shape = default_latent_shape(pipe.unet)

    jobs = [(k, seed + j) for k in ids for j in range(num_images)]  # class-major: row k of the grid
    images: list[Any] = [None] * len(jobs)
    paths: list[Path] = []
    records: list[dict[str, Any]] = []
    snaps: list[Snapshots] = []
    total_steps = None
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        cids = [k for k, _ in chunk]
        seeds = [s for _, s in chunk]
        negs = [neg_id] * len(chunk) if neg_id is not None else None
        first = [i for i, (_, s) in enumerate(chunk) if s == seed] if snapshots else None

        result = generate(
            pipe.unet,
            pipe.vae,
            make_scheduler(scheduler, pipe.scheduler.config),
            cids,
            null_class_id=pipe.null_class_id,
            scaling_factor=float(pipe.config.scaling_factor),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            negative_class_ids=negs,
            seeds=seeds,
            latent_shape=shape,
            callback=callback,
            snapshot_timesteps=snapshot_timesteps if first else None,
            snapshot_image_indices=first,
            should_stop=should_stop,
        )
        total_steps = len(result.timesteps)
        if result.snapshots is not None:
            snaps.append(result.snapshots)
        for i, (k, s) in enumerate(chunk):
            img = result.images[i]
            images[start + i] = img
            rec = {
                "format_version": 1,
                "kind": "image",
                "class": names[k],
                "class_id": k,
                "negative_class": names[neg_id] if neg_id is not None else None,
                "negative_class_id": neg_id,
                "seed": s,
                "scheduler": scheduler,
                "num_inference_steps": num_inference_steps,
                "guidance_scale": guidance_scale,
                "width": img.width,
                "height": img.height,
                "latent_shape": list(shape),
                "scaling_factor": float(pipe.config.scaling_factor),
                "batch": {"class_ids": cids, "seeds": seeds, "negative_class_ids": negs, "index": i},
                "device": str(pipe.unet.device),
                "dtype": str(pipe.unet.dtype).replace("torch.", ""),
                "model": identity,
            }
            rec["text"] = format_parameters(rec)
            path = out / f"{slugify(names[k])}-seed{s}.png"
            save_png_with_parameters(img, path, rec)
            paths.append(path)
            records.append(rec)

    summary = {
        "format_version": 1,
        "classes": [names[k] for k in ids],
        "class_ids": ids,
        "negative_class": names[neg_id] if neg_id is not None else None,
        "seeds": [seed + j for j in range(num_images)],
        "scheduler": scheduler,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "model": identity,
    }
    files = SampleFiles(images=paths, records=records)
    if len(jobs) > 1:
        grid = make_grid(images, rows=len(ids), labels=[names[k] for k in ids])
        summary_text = (
            f"grid: classes {', '.join(summary['classes'])}; seeds {seed}..{seed + num_images - 1}; "
            f"{scheduler} {num_inference_steps} steps; guidance {guidance_scale:g}"
            + (f"; negative class {summary['negative_class']}" if neg_id is not None else "")
        )
        files.grid = save_png_with_parameters(
            grid, out / "grid.png", {**summary, "kind": "grid", "text": summary_text}
        )
    if snaps:
        merged = merge_snapshots(snaps)
        fig = snapshot_figure(
            merged,
            list(range(len(merged.image_indices))),
            labels=[f"{names[k]} seed {seed}" for k in ids],
            title=f"{scheduler}, {total_steps} steps, guidance {guidance_scale:g}: decoded noisy latent, predicted x0",
        )
        files.snapshots = save_png_with_parameters(
            fig,
            out / "snapshots.png",
            {**summary, "kind": "snapshots", "snapshot_timesteps": merged.timesteps, "text": "snapshots"},
        )
    return files


def merge_snapshots(parts: Sequence[Snapshots]) -> Snapshots:
    """Concatenate the images of several :class:`Snapshots` taken at the same sampler steps (batch by batch)."""
    import torch

    first = parts[0]
    return Snapshots(
        timesteps=first.timesteps,
        step_indices=first.step_indices,
        requested=first.requested,
        noisy=torch.cat([p.noisy for p in parts], dim=1),
        pred_x0=torch.cat([p.pred_x0 for p in parts], dim=1),
        image_indices=list(range(sum(len(p.image_indices) for p in parts))),
    )


def regenerate(params: dict[str, Any], pipe: Any) -> Image.Image:
    """Recompute the image described by ``params`` (from :func:`ldm.diffusion.provenance.read_parameters`) with ``pipe``.

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
    result = generate(
        pipe.unet,
        pipe.vae,
        make_scheduler(params["scheduler"], pipe.scheduler.config),
        [int(k) for k in batch["class_ids"]],
        null_class_id=pipe.null_class_id,
        scaling_factor=float(pipe.config.scaling_factor),
        num_inference_steps=int(params["num_inference_steps"]),
        guidance_scale=float(params["guidance_scale"]),
        negative_class_ids=batch.get("negative_class_ids"),
        seeds=[int(s) for s in batch["seeds"]],
        latent_shape=tuple(params["latent_shape"]) if params.get("latent_shape") else None,
    )
    return result.images[int(batch["index"])]
