"""A diffusers pipeline for class-conditional latent diffusion: UNet2DModel + autoencoder + scheduler + class names.

    from ldm.diffusion.pipeline import ClassConditionalLatentDiffusionPipeline
    pipe = ClassConditionalLatentDiffusionPipeline.from_pretrained("runs/faces/pipeline")
    image = pipe(["smiling", "sleepy"], num_inference_steps=25, guidance_scale=3.0,
                 generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).images[0]

``save_pretrained`` writes a standard diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ``scheduler/``);
``id2label`` and ``scaling_factor`` live in ``model_index.json`` like DiTPipeline's ``id2label``. Because the class
lives outside diffusers, load it through this class (``ClassConditionalLatentDiffusionPipeline.from_pretrained``) or,
with a folder written by :func:`export_pipeline` (which adds a ``pipeline.py`` shim),
``DiffusionPipeline.from_pretrained(dir, custom_pipeline=dir)``.

Denoising is :func:`ldm.diffusion.sampling.generate`, so this pipeline and ``ldm sample`` give the same images for the same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from ldm.diffusion.sampling import generate, make_scheduler, resolve_class
from ldm.errors import UserError

# The shim that lets plain diffusers load an exported folder:
#   DiffusionPipeline.from_pretrained(dir, custom_pipeline=dir, trust_remote_code=True)
# (diffusers finds the DiffusionPipeline subclass defined outside diffusers in <dir>/pipeline.py).
PIPELINE_SHIM = '''"""Loader shim: DiffusionPipeline.from_pretrained(dir, custom_pipeline=dir, trust_remote_code=True).

Needs the `ldm` package (this project) installed; ClassConditionalLatentDiffusionPipeline.from_pretrained(dir)
works without this file.
"""

from ldm.diffusion.pipeline import ClassConditionalLatentDiffusionPipeline  # noqa: F401
'''


class ClassConditionalLatentDiffusionPipeline(DiffusionPipeline):
    """Class-conditional latent diffusion with classifier-free guidance through a null class.

    Components: ``unet`` (``UNet2DModel`` with ``num_class_embeds = len(id2label) + 1``; the last embedding is the
    null class), ``vae`` (``AutoencoderKL`` or ``AutoencoderTiny``), ``scheduler`` (any diffusers scheduler made
    from the training schedule). Config: ``id2label`` (``{"0": "frowning", ...}``), ``scaling_factor`` (latents are
    divided by it before decoding).
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
        """``DiffusionPipeline.save_pretrained`` plus ``pipeline.py``, a loader shim for plain diffusers."""
        super().save_pretrained(save_directory, *args, **kwargs)
        Path(save_directory, "pipeline.py").write_text(PIPELINE_SHIM)

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        d = self.config.id2label
        return [d[str(i)] for i in range(len(d))]

    @property
    def null_class_id(self) -> int:
        """Id of the unconditional ("null") class embedding: the number of classes."""
        return len(self.config.id2label)

    def get_label_ids(self, labels: Union[str, int, Sequence[Union[str, int]]]) -> list[int]:
        """Class names (case/whitespace-insensitive) or ids -> ids. Raises UserError listing close names if unknown."""
        if isinstance(labels, (str, int)):
            labels = [labels]
        return [resolve_class(x, self.class_names) for x in labels]

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Union[str, int, Sequence[Union[str, int]]],
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        negative_class_labels: Union[str, int, Sequence[Union[str, int]], None] = None,
        generator: Union[torch.Generator, list[torch.Generator], None] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[..., Any]] = None,
        seeds: Optional[list[int]] = None,
        scheduler: Optional[str] = None,
        snapshot_timesteps: Optional[Sequence[int]] = None,
        should_stop: Optional[Callable[[], bool]] = None,
    ) -> Union[ImagePipelineOutput, tuple]:
        """Generate one image per class label.

        Args:
            class_labels: class names or ids (one image each).
            num_inference_steps: denoising steps.
            guidance_scale: classifier-free guidance scale (1 = off, a single UNet pass).
            negative_class_labels: class(es) to steer away from (one for all, or one per image).
            generator: one ``torch.Generator`` per image (a single one is used for the only image, or to draw one
                seed per image when several are asked). ``seeds`` is the simpler alternative; default seeds 0..B-1.
            output_type: ``"pil"`` (list of PIL images), ``"np"`` (float array ``(B, H, W, C)`` in [0, 1]),
                ``"pt"`` (tensor ``(B, C, H, W)`` in [0, 1]) or ``"latent"`` (scaled latents).
            callback_on_step_end: diffusers-style ``fn(pipe, step_index, timestep, callback_kwargs) -> dict``;
                ``callback_kwargs`` holds ``latents``.
            scheduler: optional sampler name (``ddpm``, ``ddim``, ``dpm++``, ...) instead of the pipeline's scheduler.
            snapshot_timesteps: timesteps to snapshot; the :class:`~ldm.diffusion.sampling.Snapshots` are set on the output
                as ``output.snapshots``.
            should_stop: polled before each step; True raises :class:`~ldm.diffusion.sampling.SamplingCancelled`.
        """
        ids = self.get_label_ids(class_labels)
        neg = None
        if negative_class_labels is not None:
            neg = self.get_label_ids(negative_class_labels)
        b = len(ids)
        generators = None
        if generator is not None:
            if isinstance(generator, torch.Generator):
                if b == 1:
                    generators = [generator]
                else:  # one seed per image from the single generator, so images still have their own streams
                    seeds = [int(x) for x in torch.randint(0, 2**63 - 1, (b,), generator=generator).tolist()]
            else:
                generators = list(generator)
        sched = self.scheduler if scheduler is None else make_scheduler(scheduler, self.scheduler.config)

        cb = None
        if callback_on_step_end is not None:

            def cb(i: int, t: int, latents: torch.Tensor) -> None:
                callback_on_step_end(self, i, t, {"latents": latents})

        result = generate(
            self.unet,
            self.vae,
            sched,
            ids,
            null_class_id=self.null_class_id,
            scaling_factor=float(self.config.scaling_factor),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            negative_class_ids=neg,
            seeds=seeds,
            generators=generators,
            callback=cb,
            snapshot_timesteps=snapshot_timesteps,
            should_stop=should_stop,
            decode=output_type != "latent",
        )
        if output_type == "latent":
            images: Any = result.latents
        elif output_type == "pil":
            images = result.images
        elif output_type == "pt":
            images = (result.pixels + 1) / 2
        elif output_type == "np":
            images = ((result.pixels + 1) / 2).permute(0, 2, 3, 1).numpy()
        else:
            raise UserError(f"unknown output_type {output_type!r}; accepted: pil, np, pt, latent")
        if not return_dict:
            return (images,)
        out = ImagePipelineOutput(images=images)
        out.snapshots = result.snapshots  # type: ignore[attr-defined]
        return out


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


def pipeline_from_checkpoint(
    run: Any, checkpoint: Any = None, device: str = "cpu", scheduler: str | None = None
) -> ClassConditionalLatentDiffusionPipeline:
    """Assemble a pipeline from a training checkpoint of ``run`` (default: the latest), using its EMA weights.

    The VAE and scaling factor come from the run's recorded inputs (or, for runs from before those were recorded, the
    manifest of the latent cache it was trained on), the noise schedule from the run's config, class names from the
    run's class list (or the checkpoint's state).
    """
    import json

    from diffusers import UNet2DModel

    from ldm.diffusion.objective import make_train_scheduler
    from ldm.run_folder import RunFolder

    folder = RunFolder(run)
    run = folder.path
    if checkpoint is None:
        ckpt = folder.latest_checkpoint()
        if ckpt is None:
            pattern = RunFolder.checkpoint_state_path(Path(RunFolder.CHECKPOINTS, "step-*"))
            raise UserError(f"{run} has no complete checkpoint ({pattern})")
    else:
        ckpt = Path(checkpoint)
        if not ckpt.is_absolute() and not ckpt.exists():
            ckpt = folder.checkpoint_dir(str(checkpoint))
        if not RunFolder.is_checkpoint(ckpt):
            raise UserError(f"{ckpt} is not a complete checkpoint (no {RunFolder.checkpoint_state_path(ckpt).name})")
    state = RunFolder.read_checkpoint_state(ckpt)
    if not folder.config_path.is_file():
        raise UserError(f"{run} has no {folder.config_path.name}: cannot rebuild its noise schedule")
    cfg = folder.read_config()
    classes = folder.read_classes() or state.get("classes")
    if not classes:
        raise UserError(f"{run} has no {folder.classes_path.name} and the checkpoint names no classes")
    weights = ckpt / "unet_ema" if (ckpt / "unet_ema").is_dir() else ckpt / "unet"
    unet = UNet2DModel.from_pretrained(weights).eval().requires_grad_(False)
    manifest = folder.read_inputs()  # the same keys as the cache manifest has for these two
    manifest_file = folder.inputs_path
    if manifest is None:  # a run from before the inputs were recorded: ask the latent cache
        latents = Path(state.get("latents") or "")
        manifest_file = latents / "manifest.json"
        if not manifest_file.is_file():
            raise UserError(
                f"the latent cache the run was trained on ({latents}) is gone (no manifest.json): "
                "its autoencoder and scaling factor are unknown"
            )
        manifest = json.loads(manifest_file.read_text())
    source = (manifest.get("autoencoder") or {}).get("source")
    if not source:
        raise UserError(f"{manifest_file} names no autoencoder source")
    from ldm.models.autoencoder import load_autoencoder

    vae = load_autoencoder(source, device="cpu").model
    pipe = build_pipeline(
        unet,
        vae,
        make_train_scheduler(cfg.diffusion).config,
        classes,
        float(manifest["scaling_factor"]),
        scheduler=scheduler or cfg.sampling.scheduler,
    )
    return pipe.to(device)


def export_pipeline(
    run: Any, out: Any, checkpoint: Any = None, scheduler: str | None = None
) -> tuple[Any, ClassConditionalLatentDiffusionPipeline]:
    """Save a standard diffusers folder at ``out`` (atomically) from a run or pipeline folder.

    Uses the run's ``pipeline/`` (or the folder itself if it is a pipeline) unless ``checkpoint`` is given or there
    is none, then the EMA weights of that (or the latest) checkpoint. ``scheduler`` replaces the default sampler.
    Returns ``(out_path, pipeline)``.
    """
    from ldm.run_folder import RunFolder
    from ldm.utils import atomic_dir

    run = Path(run)
    if not run.exists():
        raise UserError(f"run folder not found: {run}")
    out = Path(out)
    if out.resolve() in (run.resolve(), RunFolder(run).pipeline_dir.resolve()):
        raise UserError(f"--out {out} is the source itself; choose another folder")
    folder = RunFolder.pipeline_of(run)
    if checkpoint is None and folder is not None:
        pipe = ClassConditionalLatentDiffusionPipeline.from_pretrained(folder)
        if scheduler:
            pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    elif RunFolder(run).checkpoints_dir.is_dir():
        pipe = pipeline_from_checkpoint(run, checkpoint, scheduler=scheduler)
    else:
        raise UserError(
            f"{run} has neither {RunFolder.PIPELINE}/model_index.json nor {RunFolder.CHECKPOINTS}/: nothing to export"
        )
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return out, pipe
