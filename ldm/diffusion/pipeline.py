"""The class-conditional latent diffusion pipeline: the one way to sample, plus building, loading and exporting it.

    from ldm.diffusion.pipeline import load_pipeline
    pipe = load_pipeline("runs/faces")                       # a run folder or an exported pipeline folder
    out = pipe(["smiling", "sleepy"], num_inference_steps=25, guidance_scale=3.0, seeds=[0, 1])
    out.images[0].save("smiling.png")

:class:`ClassConditionalLatentDiffusionPipeline` is a diffusers ``DiffusionPipeline`` (UNet2DModel + autoencoder +
scheduler + class names). Its ``__call__`` holds the denoising loop, written out in full diffusers-style: the
scheduler owns the update rule, the pipeline owns classifier-free guidance through a null class, the negative class,
seeding (one ``torch.Generator`` per image, so an image does not depend on its batch mates), timestep snapshots,
the per-step callback, cancellation and decoding. The trainer's grids, evaluation, ``ldm sample``, the app, the
benchmarks and the notebook all call it, so they give the same pixels for the same seed and settings.

``save_pretrained`` writes a standard diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ``scheduler/``);
``id2label`` and ``scaling_factor`` live in ``model_index.json`` like DiTPipeline's ``id2label``. Because the class
lives outside diffusers, load it through this class (:func:`load_pipeline` or
``ClassConditionalLatentDiffusionPipeline.from_pretrained``) or, with a folder written by ``save_pretrained`` (which
adds a ``pipeline.py`` shim), ``DiffusionPipeline.from_pretrained(dir, custom_pipeline=dir)``.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from ldm.diffusion.schedulers import make_scheduler
from ldm.errors import UserError
from ldm.figures import to_pil
from ldm.run_folder import RunFolder
from ldm.utils import atomic_write_json

MAX_SEED = 2**63 - 1  # seeds are int64 (torch.Generator.manual_seed); the app and the CLI accept 0 .. MAX_SEED

# The shim that lets plain diffusers load an exported folder:
#   DiffusionPipeline.from_pretrained(dir, custom_pipeline=dir, trust_remote_code=True)
# (diffusers finds the DiffusionPipeline subclass defined outside diffusers in <dir>/pipeline.py).
PIPELINE_SHIM = '''"""Loader shim: DiffusionPipeline.from_pretrained(dir, custom_pipeline=dir, trust_remote_code=True).

Needs the `ldm` package (this project) installed; ClassConditionalLatentDiffusionPipeline.from_pretrained(dir)
works without this file.
"""

from ldm.diffusion.pipeline import ClassConditionalLatentDiffusionPipeline  # noqa: F401
'''

ClassLabels = Union[str, int, Sequence[Union[str, int]]]


class SamplingCancelled(Exception):
    """Raised by the pipeline when ``should_stop()`` returned True between two denoising steps."""


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

    @staticmethod
    def concat(parts: Sequence[Snapshots]) -> Snapshots:
        """The images of several snapshots taken at the same sampler steps (batch by batch), in one."""
        first = parts[0]
        return Snapshots(
            timesteps=first.timesteps,
            step_indices=first.step_indices,
            requested=first.requested,
            noisy=torch.cat([p.noisy for p in parts], dim=1),
            pred_x0=torch.cat([p.pred_x0 for p in parts], dim=1),
            image_indices=list(range(sum(len(p.image_indices) for p in parts))),
        )


@dataclass
class ClassConditionalPipelineOutput(BaseOutput):
    """Output of :class:`ClassConditionalLatentDiffusionPipeline`.

    ``images``: as ``output_type`` asked (PIL images, ``np`` ``(B, H, W, C)`` / ``pt`` ``(B, C, H, W)`` in [0, 1],
    or the scaled latents); ``latents``: final **scaled** latents ``(B, c, h, w)`` (CPU, float32); ``pixels``: the
    decoded images ``(B, C, H, W)`` in [-1, 1] (CPU, float32) before quantisation, None for ``output_type="latent"``;
    ``snapshots``: :class:`Snapshots` or None; ``timesteps``: the sampler's timesteps.
    """

    images: Any
    latents: torch.Tensor
    pixels: Optional[torch.Tensor] = None
    snapshots: Optional[Snapshots] = None
    timesteps: Optional[list[int]] = None


# ----------------------------------------------------------------------------------------------------
# class names


def normalize_class_name(name: str) -> str:
    return " ".join(str(name).split()).casefold()


def list_class_names(names: Sequence[str], limit: int = 30) -> str:
    """``names`` joined for an error message, cut after ``limit``."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


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
        raise UserError(f"empty class name; known classes: {list_class_names(names)}")
    table = {normalize_class_name(n): i for i, n in enumerate(names)}
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=5, cutoff=0.4)
    hint = f"closest: {', '.join(names[table[c]] for c in close)}; " if close else ""
    raise UserError(f"unknown class {str(name).strip()!r}; {hint}known classes: {list_class_names(names)}")


# ----------------------------------------------------------------------------------------------------
# pieces of the loop


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
    if vae is None:
        return latents[:, : min(3, latents.shape[1])].float().clamp(-1, 1).cpu()
    dtype = next(vae.parameters()).dtype
    with torch.no_grad():
        images = vae.decode(latents.to(dtype) / scaling_factor).sample
    return images.float().clamp(-1, 1).cpu()


# ----------------------------------------------------------------------------------------------------
# the pipeline


class ClassConditionalLatentDiffusionPipeline(DiffusionPipeline):
    """Class-conditional latent diffusion with classifier-free guidance through a null class.

    Components: ``unet`` (``UNet2DModel`` with ``num_class_embeds = len(id2label) + 1``; the last embedding is the
    null class), ``vae`` (``AutoencoderKL`` or ``AutoencoderTiny``; None decodes to the first latent channels, for
    tests), ``scheduler`` (any diffusers scheduler made from the training schedule). Config: ``id2label``
    (``{"0": "frowning", ...}``), ``scaling_factor`` (latents are divided by it before decoding).
    """

    model_cpu_offload_seq = "unet->vae"

    def __init__(
        self,
        unet: Any,
        vae: Any,
        scheduler: Any,
        id2label: Optional[dict[str, str]] = None,
        scaling_factor: Optional[float] = None,
    ):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler)
        if id2label is None:
            n = int(unet.config.num_class_embeds) - 1
            id2label = {str(i): str(i) for i in range(n)}
        id2label = {str(k): str(v) for k, v in id2label.items()}
        if scaling_factor is None:
            scaling_factor = float(getattr(vae.config, "scaling_factor", None) or 1.0)
        self.register_to_config(id2label=id2label, scaling_factor=float(scaling_factor))

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> None:
        """``DiffusionPipeline.save_pretrained`` plus ``pipeline.py``, a loader shim for plain diffusers. The configs
        lose diffusers' ``_name_or_path`` (where a component was loaded from: an absolute folder on this machine that
        nothing reads back), so the folder names no place and can be moved or shared."""
        super().save_pretrained(save_directory, *args, **kwargs)
        Path(save_directory, "pipeline.py").write_text(PIPELINE_SHIM)
        for config in [Path(save_directory, "model_index.json"), *Path(save_directory).glob("*/config.json")]:
            d = json.loads(config.read_text())
            if d.pop("_name_or_path", None) is not None:
                atomic_write_json(config, d)

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        d = self.config.id2label
        return [d[str(i)] for i in range(len(d))]

    @property
    def null_class_id(self) -> int:
        """Id of the unconditional ("null") class embedding: the number of classes."""
        return len(self.config.id2label)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(c, h, w)`` of the latents the UNet denoises (from its config)."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (int(self.unet.config.in_channels), int(h), int(w))

    def get_label_ids(self, labels: ClassLabels) -> list[int]:
        """Class names (case/whitespace-insensitive) or ids -> ids. Raises UserError listing close names if unknown."""
        if isinstance(labels, (str, int)):
            labels = [labels]
        return [resolve_class(x, self.class_names) for x in labels]

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, c, h, w)`` -> images ``(B, C, H, W)`` float32 on CPU in [-1, 1]."""
        return decode_latents(self.vae, latents, float(self.config.scaling_factor))

    def _generators(
        self, b: int, generator: Union[torch.Generator, list[torch.Generator], None], seeds: Optional[Sequence[int]]
    ) -> list[torch.Generator]:
        """One generator per image: ``generator`` (a list, or a single one for a single image, or one that draws a
        seed per image), else CPU generators seeded ``seeds`` (default ``0..B-1``)."""
        if isinstance(generator, torch.Generator):
            if b == 1:
                return [generator]
            # one seed per image from the single generator, so images still have their own streams
            seeds = [int(x) for x in torch.randint(0, 2**63 - 1, (b,), generator=generator).tolist()]
        elif generator is not None:
            if len(generator) != b:
                raise UserError(f"generator: give one per image ({b}), got {len(generator)}")
            return list(generator)
        seeds = list(range(b)) if seeds is None else list(seeds)
        if len(seeds) != b:
            raise UserError(f"seeds: give one per image ({b}), got {len(seeds)}")
        for s in seeds:
            if isinstance(s, bool) or not float(s).is_integer() or not 0 <= int(s) <= MAX_SEED:
                raise UserError(f"seed {s} is not a whole number from 0 to {MAX_SEED} (2**63 - 1)")
        seeds = [int(s) for s in seeds]
        return [torch.Generator("cpu").manual_seed(s) for s in seeds]

    def _check(self, b: int, num_inference_steps: int, guidance_scale: float, neg: Optional[list[int]]) -> None:
        if b == 0:
            raise UserError("no images requested (class_labels is empty)")
        steps = self.scheduler.config.num_train_timesteps
        if not 1 <= num_inference_steps <= steps:
            raise UserError(
                f"num_inference_steps must be from 1 to {steps} (the model's training steps), "
                f"got {num_inference_steps}"
            )
        if not (math.isfinite(guidance_scale) and guidance_scale >= 0):  # nan/inf: all-black images
            raise UserError(f"guidance_scale must be a number >= 0 (1 = no guidance), got {guidance_scale}")
        if neg is not None and len(neg) != b:
            raise UserError(f"negative_class_labels: give 1 or {b}, got {len(neg)}")

    def _decode_snapshots(
        self,
        snap_map: dict[int, list[int]],
        timesteps: list[float],
        noisy: list[torch.Tensor],
        pred_x0: list[torch.Tensor],
        image_indices: list[int],
    ) -> Snapshots:
        """Decode the snapshotted latents (per step ``(n, c, h, w)``) in one VAE batch."""
        s, n = len(noisy), len(image_indices)
        dec = self.decode_latents(torch.cat([torch.cat(noisy), torch.cat(pred_x0)]))
        dec = dec.view(2, s, n, *dec.shape[1:])
        steps = list(snap_map)
        return Snapshots(
            timesteps=[int(round(float(timesteps[k]))) for k in steps],
            step_indices=steps,
            requested=[snap_map[k] for k in steps],
            noisy=dec[0],
            pred_x0=dec[1],
            image_indices=image_indices,
        )

    @staticmethod
    def _postprocess(pixels: torch.Tensor, output_type: str) -> Any:
        """Decoded images ``(B, C, H, W)`` in [-1, 1] -> PIL images, or ``np`` / ``pt`` arrays in [0, 1]."""
        if output_type == "pil":
            return to_pil(pixels)
        if output_type == "pt":
            return (pixels + 1) / 2
        return ((pixels + 1) / 2).permute(0, 2, 3, 1).numpy()

    @torch.no_grad()
    def __call__(
        self,
        class_labels: ClassLabels,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        negative_class_labels: Optional[ClassLabels] = None,
        generator: Union[torch.Generator, list[torch.Generator], None] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Optional[Callable[[int, int, torch.Tensor], Any]] = None,
        callback_on_step_end: Optional[Callable[..., Any]] = None,
        seeds: Optional[Sequence[int]] = None,
        scheduler: Optional[str] = None,
        snapshot_timesteps: Optional[Sequence[int]] = None,
        snapshot_image_indices: Optional[Sequence[int]] = None,
        should_stop: Optional[Callable[[], bool]] = None,
    ) -> Union[ClassConditionalPipelineOutput, tuple]:
        """Generate one image per class label with classifier-free guidance.

        Args:
            class_labels: class names (case/whitespace-insensitive) or ids, one image each.
            num_inference_steps: denoising steps of the sampler.
            guidance_scale: CFG scale w in ``eps_u + w (eps_c - eps_u)`` (Ho & Salimans 2022); 1 = a single
                conditional UNet pass, else both branches in one UNet batch.
            negative_class_labels: class(es) to steer away from (one for all images, or one per image): replaces
                the null class in the unconditional branch.
            generator: one ``torch.Generator`` per image (a single one is used for the only image, or draws one seed
                per image when several are asked). ``seeds`` is the simpler alternative.
            output_type: ``"pil"`` (list of PIL images), ``"np"`` (float array ``(B, H, W, C)`` in [0, 1]),
                ``"pt"`` (tensor ``(B, C, H, W)`` in [0, 1]) or ``"latent"`` (scaled latents, no decoding).
            return_dict: False returns ``(images,)``.
            callback: ``callback(step_index, timestep, latents)`` after each step (latents scaled, ``(B, c, h, w)``).
            callback_on_step_end: diffusers-style ``fn(pipe, step_index, timestep, callback_kwargs)``;
                ``callback_kwargs`` holds ``latents``.
            seeds: one seed per image (default ``0..B-1``); image i draws all its noise (start and per-step) from a
                CPU ``torch.Generator`` seeded ``seeds[i]``, so it does not depend on its batch mates or the device.
            scheduler: sampler name (``ddpm``, ``ddim``, ``dpm++``, ...: :data:`ldm.choices.SCHEDULERS`)
                built fresh from the pipeline's schedule for this call; None uses ``self.scheduler``.
            snapshot_timesteps: timesteps (0..num_train_timesteps-1) to snapshot, mapped to the nearest sampler step;
                all snapshots are decoded in one VAE batch after sampling (``output.snapshots``).
            snapshot_image_indices: which images to snapshot (default: all).
            should_stop: polled before each step; when it returns True, :class:`SamplingCancelled` is raised.

        Returns:
            :class:`ClassConditionalPipelineOutput` (images, scaled latents, pixels in [-1, 1], snapshots).
        """
        ids = self.get_label_ids(class_labels)
        b = len(ids)
        neg = None if negative_class_labels is None else self.get_label_ids(negative_class_labels)
        if neg is not None and len(neg) == 1:
            neg = neg * b
        self._check(b, num_inference_steps, guidance_scale, neg)
        if output_type not in ("pil", "np", "pt", "latent"):
            raise UserError(f"unknown output_type {output_type!r}; accepted: pil, np, pt, latent")
        generators = self._generators(b, generator, seeds)
        sched = self.scheduler if scheduler is None else make_scheduler(scheduler, self.scheduler.config)

        param = next(self.unet.parameters())  # any nn.Module with a config works as the denoiser
        device, dtype = param.device, param.dtype
        sched.set_timesteps(num_inference_steps, device=device)
        timesteps = sched.timesteps
        # Per-image noise from its own generator, drawn on the generator's device (CPU by default), then moved:
        # the same seed gives the same start on every device and in every batch.
        noise = torch.stack(
            [torch.randn(self.latent_shape, generator=g, device=g.device, dtype=torch.float32) for g in generators]
        )
        latents = (noise.to(device) * sched.init_noise_sigma).to(dtype)

        do_cfg = guidance_scale != 1.0
        uncond = neg if neg is not None else [self.null_class_id] * b
        labels = torch.tensor(uncond + ids if do_cfg else ids, device=device)

        snap_map = map_snapshot_timesteps(snapshot_timesteps, timesteps.tolist()) if snapshot_timesteps else {}
        snap_idx = list(range(b)) if snapshot_image_indices is None else [int(i) for i in snapshot_image_indices]
        snap_noisy: list[torch.Tensor] = []
        snap_x0: list[torch.Tensor] = []
        # Stochastic schedulers (ddpm, euler_a) accept a list of generators, one per batch element.
        step_kwargs = {"generator": generators} if "generator" in inspect.signature(sched.step).parameters else {}

        for i, t in enumerate(timesteps):
            if should_stop is not None and should_stop():
                raise SamplingCancelled(f"sampling cancelled at step {i} of {len(timesteps)}")
            model_input = sched.scale_model_input(latents, t)
            out = self.unet(torch.cat([model_input] * 2) if do_cfg else model_input, t, class_labels=labels).sample
            if do_cfg:
                eps_u, eps_c = out.chunk(2)
                out = eps_u + guidance_scale * (eps_c - eps_u)
            step = sched.step(out, t, latents, return_dict=True, **step_kwargs)
            if i in snap_map:
                x0 = getattr(step, "pred_original_sample", None)
                if x0 is None:
                    x0 = _predict_x0(sched, model_input.float(), out.float(), t)
                snap_noisy.append(model_input[snap_idx].float())
                snap_x0.append(x0[snap_idx].float())
            latents = step.prev_sample
            if callback is not None:
                callback(i, int(round(float(t))), latents)
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, int(round(float(t))), {"latents": latents})

        latents = latents.float()
        pixels = None if output_type == "latent" else self.decode_latents(latents)
        snapshots = None
        if snap_map:
            snapshots = self._decode_snapshots(snap_map, timesteps.tolist(), snap_noisy, snap_x0, snap_idx)
        images = latents.cpu() if pixels is None else self._postprocess(pixels, output_type)
        if not return_dict:
            return (images,)
        return ClassConditionalPipelineOutput(
            images=images,
            latents=latents.cpu(),
            pixels=pixels,
            snapshots=snapshots,
            timesteps=[int(round(float(t))) for t in timesteps],
        )


# ----------------------------------------------------------------------------------------------------
# building, loading and exporting


def build_pipeline(
    unet: Any,
    vae: Any,
    train_scheduler_config: Any,
    class_names: Sequence[str],
    scaling_factor: float,
    scheduler: str = "dpm++",
) -> ClassConditionalLatentDiffusionPipeline:
    """Assemble a pipeline from trained parts; the scheduler ``scheduler`` is built from the training schedule."""
    if int(unet.config.num_class_embeds) != len(class_names) + 1:
        raise UserError(
            f"the UNet has {unet.config.num_class_embeds} class embeddings but {len(class_names)} class names were "
            f"given (expected num_class_embeds = classes + 1, the last being the null class)"
        )
    return ClassConditionalLatentDiffusionPipeline(
        unet=unet,
        vae=vae,
        scheduler=make_scheduler(scheduler, train_scheduler_config),
        id2label={str(i): str(n) for i, n in enumerate(class_names)},
        scaling_factor=float(scaling_factor),
    )


def load_pipeline(
    path: str | Path, device: str | None = None, dtype: Any = None
) -> ClassConditionalLatentDiffusionPipeline:
    """Load the pipeline of a run folder or a pipeline folder, quietly (no progress bars).

    ``device``: :func:`ldm.device.resolve_device`'s (None: the best here); ``dtype``: by default
    :func:`ldm.device.inference_dtype`'s (float16 or bfloat16 on CUDA, float32 elsewhere).
    """
    from diffusers.utils import logging as diffusers_logging

    from ldm.device import inference_dtype, resolve_device

    device = resolve_device(device)  # before the loading: a bad --device is an error, not a traceback after it
    folder = RunFolder.find_pipeline(path)
    bar = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # no "Loading pipeline components" bar in CLI output
    try:
        pipe = ClassConditionalLatentDiffusionPipeline.from_pretrained(folder, dtype=dtype or inference_dtype(device))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"could not load the pipeline in {folder}: {e}") from None
    finally:
        if bar:
            diffusers_logging.enable_progress_bar()
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def resolve_checkpoint(run: Any, checkpoint: Any = None) -> Path:
    """The complete checkpoint folder ``checkpoint`` names in ``run``: None for the latest, a folder name
    (``step-XXXXXX``) or a path. Raises UserError when there is none."""
    folder = RunFolder(run)
    if checkpoint is None:
        ckpt = folder.latest_checkpoint()
        if ckpt is None:
            pattern = RunFolder.checkpoint_state_path(Path(RunFolder.CHECKPOINTS, "step-*"))
            raise UserError(f"{folder.path} has no complete checkpoint ({pattern})")
        return ckpt
    ckpt = Path(checkpoint)
    if not ckpt.is_absolute() and not ckpt.exists():
        ckpt = folder.checkpoint_dir(str(checkpoint))
    if not RunFolder.is_checkpoint(ckpt):
        raise UserError(f"{ckpt} is not a complete checkpoint (no {RunFolder.checkpoint_state_path(ckpt).name})")
    return ckpt


def pipeline_from_checkpoint(
    run: Any, checkpoint: Any = None, device: str = "cpu", scheduler: str | None = None
) -> ClassConditionalLatentDiffusionPipeline:
    """Assemble a pipeline from a training checkpoint of ``run`` (default: the latest), using its EMA weights.

    The VAE and scaling factor come from the run's recorded inputs (or, for runs from before those were recorded, the
    manifest of the latent cache it was trained on), the noise schedule from the run's config, class names from the
    run's class list (or the checkpoint's state).
    """
    from diffusers import UNet2DModel

    from ldm.diffusion.objective import make_train_scheduler

    folder = RunFolder(run)
    run = folder.path
    ckpt = resolve_checkpoint(folder, checkpoint)
    state = RunFolder.read_checkpoint_state(ckpt)
    if not folder.config_path.is_file():
        raise UserError(f"{run} has no {folder.config_path.name}: cannot rebuild its noise schedule")
    cfg = folder.read_config()
    classes = folder.read_classes() or state.get("classes")
    if not classes:
        raise UserError(f"{run} has no {folder.classes_path.name} and the checkpoint names no classes")
    weights = ckpt / "unet_ema" if (ckpt / "unet_ema").is_dir() else ckpt / "unet"
    unet = UNet2DModel.from_pretrained(weights).eval().requires_grad_(False)
    from ldm.data.manifest import MANIFEST, Manifest
    from ldm.models.autoencoder import load_autoencoder

    inputs = folder.read_inputs()
    if inputs is not None:
        source, scaling_factor = (inputs.get("autoencoder") or {}).get("source"), inputs.get("scaling_factor")
        recorded_in = folder.inputs_path
    else:  # a run from before the inputs were recorded: ask the latent cache
        latents = Path(state.get("latents") or "")
        if not Manifest.exists(latents):
            raise UserError(
                f"the latent cache the run was trained on ({latents}) is gone (no {MANIFEST}): "
                "its autoencoder and scaling factor are unknown"
            )
        manifest = Manifest.load(latents)
        source, scaling_factor = manifest.autoencoder.source, manifest.scaling_factor
        recorded_in = Manifest.path(latents)
    if not source:
        raise UserError(f"{recorded_in} names no autoencoder source")

    vae = load_autoencoder(source, device="cpu").model
    pipe = build_pipeline(
        unet,
        vae,
        make_train_scheduler(cfg.diffusion).config,
        classes,
        float(scaling_factor),
        scheduler=scheduler or cfg.sampling.scheduler,
    )
    return pipe.to(device)


def export_pipeline(
    run: Any, out: Any, checkpoint: Any = None, scheduler: str | None = None
) -> tuple[Any, ClassConditionalLatentDiffusionPipeline]:
    """Save a standard diffusers folder at ``out`` (atomically) from a run or pipeline folder, with its model card
    (``README.md``, :mod:`ldm.model_card`).

    Uses the run's ``pipeline/`` (or the folder itself if it is a pipeline) unless ``checkpoint`` is given or there
    is none, then the EMA weights of that (or the latest) checkpoint. ``scheduler`` replaces the default sampler.
    Returns ``(out_path, pipeline)``.
    """
    from ldm.model_card import run_of, write_model_card
    from ldm.utils import atomic_dir, check_output_folder

    run = Path(run)
    if not run.exists():
        raise UserError(f"run folder not found: {run}")
    out = check_output_folder(out)
    if out.resolve() in (run.resolve(), RunFolder(run).pipeline_dir.resolve()):
        raise UserError(f"--out {out} is the source itself; choose another folder")
    folder = RunFolder.pipeline_of(run)
    ckpt = None
    if checkpoint is None and folder is not None:
        pipe = ClassConditionalLatentDiffusionPipeline.from_pretrained(folder)
        if scheduler:
            pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    elif RunFolder(run).checkpoints_dir.is_dir():
        ckpt = resolve_checkpoint(run, checkpoint)
        pipe = pipeline_from_checkpoint(run, ckpt, scheduler=scheduler)
    else:
        raise UserError(
            f"{run} has neither {RunFolder.PIPELINE}/model_index.json nor {RunFolder.CHECKPOINTS}/: nothing to export"
        )
    # the card's facts: the run the weights come from (none for a bare pipeline folder), its checkpoint
    trained_in = RunFolder(run) if RunFolder(run).is_run else run_of(folder) if folder is not None else None
    source = folder if ckpt is None else None
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        write_model_card(
            tmp,
            trained_in,
            ckpt,
            name=out.name,
            source=source,
            previous=source or (trained_in.pipeline_dir if trained_in is not None else None),
        )
    return out, pipe
