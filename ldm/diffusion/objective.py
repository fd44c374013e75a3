"""The diffusion objective: DDPM noise schedule, loss, and a fast training step.

    scheduler = make_train_scheduler(cfg.diffusion)
    loss = diffusion_loss(unet, scheduler, latents, labels, cfg.diffusion, null_class_id=num_classes, generator=g)

The network and the schedule stay apart (as in diffusers): the scheduler only supplies ``alphas_cumprod``,
``add_noise`` and ``get_velocity``. Losses follow DDPM (Ho et al. 2020, https://arxiv.org/abs/2006.11239) with
the v-parameterisation of Salimans & Ho 2022 (https://arxiv.org/abs/2202.00512) and min-SNR-gamma weighting
of Hang et al. 2023 (https://arxiv.org/abs/2303.09556).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ldm.choices import BETA_SCHEDULES, LOSSES, MIXED_PRECISION, PREDICTION_TYPES
from ldm.errors import UserError

if TYPE_CHECKING:
    import torch
    from diffusers import DDPMScheduler

    from ldm.config import DiffusionConfig


def make_train_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """The training noise schedule: a diffusers ``DDPMScheduler`` with ``cfg``'s steps, betas and prediction type."""
    from diffusers import DDPMScheduler

    if cfg.beta_schedule not in BETA_SCHEDULES:
        raise UserError(f"diffusion.beta_schedule {cfg.beta_schedule!r}; accepted: {', '.join(BETA_SCHEDULES)}")
    if cfg.prediction_type not in PREDICTION_TYPES:
        raise UserError(f"diffusion.prediction_type {cfg.prediction_type!r}; accepted: {', '.join(PREDICTION_TYPES)}")
    if cfg.num_train_timesteps < 2:
        raise UserError(f"diffusion.num_train_timesteps must be >= 2, got {cfg.num_train_timesteps}")
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
    )


def snr(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``alpha_bar_t / (1 - alpha_bar_t)`` at integer ``timesteps`` (B,), float32 (B,)."""
    import torch

    ac = scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]
    return ac / (1.0 - ac)


def min_snr_weights(snr_t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights of min-SNR-gamma (Hang et al. 2023, eq. 8 and its v form), shape of ``snr_t``.

    The paper weights the x0-space loss by ``min(snr, gamma)``. An epsilon-prediction MSE equals the x0 MSE
    times ``1 / snr``, a v-prediction MSE equals it times ``1 / (snr + 1)``, hence the two divisors.
    """
    import torch

    if prediction_type == "epsilon":
        # min(snr, g) / snr == min(1, g / snr); written this way so snr == 0 (the last cosine step) gives 1, not nan.
        return torch.clamp(gamma / snr_t, max=1.0)
    if prediction_type == "v_prediction":
        return torch.clamp(snr_t, max=gamma) / (snr_t + 1.0)
    raise UserError(f"prediction_type {prediction_type!r}; accepted: {', '.join(PREDICTION_TYPES)}")


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, loss: str, huber_delta: float = 0.1) -> torch.Tensor:
    """Unreduced loss, shaped like ``pred``: squared error, absolute error, or smooth L1 with ``beta=huber_delta``."""
    import torch.nn.functional as F

    if loss == "mse":
        return F.mse_loss(pred, target, reduction="none")
    if loss == "l1":
        return F.l1_loss(pred, target, reduction="none")
    if loss == "huber":
        return F.smooth_l1_loss(pred, target, reduction="none", beta=huber_delta)
    raise UserError(f"diffusion.loss {loss!r}; accepted: {', '.join(LOSSES)}")


def diffusion_loss(
    unet: Any,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    labels: torch.Tensor,
    cfg: DiffusionConfig,
    null_class_id: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The training loss of one batch, a float32 scalar tensor (no ``.item()``: no device sync).

    Args:
        unet: a class-conditional ``UNet2DModel`` (or a compiled wrapper of one).
        scheduler: the training ``DDPMScheduler`` (its ``prediction_type`` is not read; ``cfg``'s is).
        latents: clean scaled latents ``(B, C, h, w)``, roughly unit variance.
        labels: class ids ``(B,)`` int64 in ``[0, null_class_id)``.
        cfg: loss, prediction type, min-SNR gamma, label dropout.
        null_class_id: the id of the null (unconditional) class, ``num_classes``.
        generator: source of the label dropout, timesteps and noise (on ``latents.device``); ``None`` = global RNG.

    Steps: each label becomes the null class with probability ``cfg.label_dropout``; ``t ~ U{0..T-1}``;
    ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; target ``eps`` or
    ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0``;
    per-sample mean of the chosen loss, times the min-SNR weight if ``cfg.snr_gamma`` is set, then the batch mean.
    """
    import torch

    if cfg.loss not in LOSSES:
        raise UserError(f"diffusion.loss {cfg.loss!r}; accepted: {', '.join(LOSSES)}")
    if cfg.prediction_type not in PREDICTION_TYPES:
        raise UserError(f"diffusion.prediction_type {cfg.prediction_type!r}; accepted: {', '.join(PREDICTION_TYPES)}")
    b, device = latents.shape[0], latents.device
    if cfg.label_dropout > 0:
        drop = torch.rand(b, device=device, generator=generator) < cfg.label_dropout
        labels = torch.where(drop, torch.full_like(labels, null_class_id), labels)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=device, generator=generator)
    noise = torch.randn(latents.shape, device=device, dtype=latents.dtype, generator=generator)
    noisy = scheduler.add_noise(latents, noise, t)
    if cfg.prediction_type == "epsilon":
        target = noise
    else:
        target = scheduler.get_velocity(latents, noise, t)
    pred = unet(noisy, t, class_labels=labels).sample
    # The loss in float32 even under autocast: bf16 squared errors lose the small late-training differences.
    per_elem = elementwise_loss(pred.float(), target.float(), cfg.loss, cfg.huber_delta)
    per_sample = per_elem.mean(dim=tuple(range(1, per_elem.ndim)))
    if cfg.snr_gamma is not None:
        per_sample = per_sample * min_snr_weights(snr(scheduler, t), cfg.snr_gamma, cfg.prediction_type)
    return per_sample.mean()


# ---------------------------------------------------------------------------------------------------------------------
# speed: precision, memory format, compilation


def cpu_bf16_is_fast() -> bool:
    """Whether this CPU runs bfloat16 convolutions through oneDNN's AVX-512 kernels (where bf16 autocast pays)."""
    import torch

    try:
        cap = torch.backends.cpu.get_cpu_capability()
        return cap.startswith("AVX512") and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_mixed_precision(setting: str, device: str) -> str:
    """``"auto"`` / ``"no"`` / ``"bf16"`` / ``"fp16"`` -> the precision to use: ``"no"``, ``"bf16"`` or ``"fp16"``.

    ``auto``: on CUDA bf16 where supported, else fp16; on CPU bf16 where oneDNN has AVX-512 bf16 kernels, else
    ``"no"``; ``"no"`` on other devices (MPS). Measured on the 2-core AVX-512 development machine (AMD EPYC, no
    native bf16 instructions), seed preset, 16x16x4 latents, batch 64, CPU seconds per step on one thread (median
    of 5, machine shared, about +-10%): float32 1.46 s; bf16 autocast 0.89 s (with the attention fix in
    :class:`ldm.models.unet.CPUFriendlyAttnProcessor`, else 1.44 s: the fused bf16 attention kernel eats the gain);
    bf16 + channels-last 1.24 s (GroupNorm's channels-last kernels are slow). Whole steps from
    ``scripts/bench_train.py`` (img/s, median of 8, load average ~3): 1 thread: plain float32 loop 41.8, this
    step with fused AdamW + EMA 68.2 (1.63x); 2 threads: 87.3 vs 110.6 (1.27x; bf16 kernels scale worse to 2 threads).
    A CPU without AVX-512 falls back to float32. An explicit setting is returned as is, except fp16 off CUDA
    (CPU fp16 autocast is slow and unsupported for many ops), which is a :class:`UserError`.
    """
    if setting not in MIXED_PRECISION:
        raise UserError(f"training.mixed_precision {setting!r}; accepted: {', '.join(MIXED_PRECISION)}")
    dev = str(device).split(":")[0]
    if setting == "auto":
        if dev == "cuda":
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if dev == "cpu":
            return "bf16" if cpu_bf16_is_fast() else "no"
        return "no"
    if setting == "fp16" and dev != "cuda":
        raise UserError(f"mixed_precision='fp16' needs CUDA (device is {device!r}); use 'bf16' or 'no'")
    return setting


def optimizer_kwargs(device: str) -> dict[str, Any]:
    """Extra keyword arguments for torch's Adam/AdamW on ``device``: ``fused=True`` (one kernel for all parameters)
    on CPU and CUDA, ``{}`` elsewhere. Same maths as the default implementation."""
    dev = str(device).split(":")[0]
    return {"fused": True} if dev in ("cpu", "cuda") else {}


def autocast_context(mixed_precision: str, device: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``"bf16"`` / ``"fp16"`` on ``device``'s type, a no-op context for ``"no"``."""
    import torch

    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    if dtype is None:
        raise UserError(f"mixed_precision {mixed_precision!r}; accepted here: no, bf16, fp16 (resolve 'auto' first)")
    return torch.autocast(device_type=str(device).split(":")[0], dtype=dtype)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A 4-D tensor in channels-last memory format (same values and shape); other tensors unchanged."""
    import torch

    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def prepare_unet_for_training(unet: Any, channels_last: bool = False, compile: bool = False) -> Any:
    """Put ``unet`` in train mode, channels-last if asked, and return the module to call (maybe compiled).

    Also (re)installs :class:`ldm.models.unet.CPUFriendlyAttnProcessor` (``build_unet`` already does; a model loaded
    with ``from_pretrained`` has diffusers' default processor). Channels-last is off by default: measured slower
    for these GroupNorm-heavy UNets on CPU (see :func:`resolve_mixed_precision`).

    The returned module shares parameters with ``unet``: save, EMA-update and export ``unet`` itself, call the
    returned one. ``compile=True`` tries ``torch.compile`` and falls back to eager (with a warning) when no
    working compiler is present.
    """
    import torch

    from ldm.models.unet import set_attention_processor

    set_attention_processor(unet)
    unet.train()
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if compile:
        return try_compile(unet)
    return unet


def try_compile(module: Any) -> Any:
    """``torch.compile(module)`` if a C compiler and inductor are usable here, else ``module`` (warning printed).

    Not used by default: on the 2-core development machine (shared, loaded) compiling the seed preset's training
    graph took 29 min wall / 151 CPU-s in the main process, and the compiled bf16 step (1.04 CPU-s) was no faster
    than the eager bf16 step with :class:`ldm.models.unet.CPUFriendlyAttnProcessor` (0.89 CPU-s).
    """
    import shutil
    import warnings

    import torch

    if not hasattr(torch, "compile"):
        warnings.warn("torch.compile unavailable in this torch; training eagerly", stacklevel=2)
        return module
    if str(next(module.parameters()).device).startswith("cpu") and not (
        shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    ):
        warnings.warn("torch.compile needs a C compiler on CPU and none was found; training eagerly", stacklevel=2)
        return module
    return torch.compile(module)


def make_train_step(
    unet: Any,
    scheduler: DDPMScheduler,
    optimizer: torch.optim.Optimizer,
    cfg: DiffusionConfig,
    null_class_id: int,
    mixed_precision: str = "no",
    channels_last: bool = False,
    compile: bool = False,
    max_grad_norm: float = 0.0,
    device: str | None = None,
) -> Callable[..., torch.Tensor]:
    """A function ``step(latents (B,C,h,w), labels (B,), generator) -> loss`` doing one optimiser step.

    Forward and loss under autocast (``mixed_precision`` already resolved), backward, optional gradient clipping
    at ``max_grad_norm`` (0 = off), ``optimizer.step()`` and ``zero_grad(set_to_none=True)``. The returned loss is a
    detached float32 scalar tensor; call ``.item()`` only when logging, to avoid a sync per step.
    """
    import torch

    device = device or str(next(unet.parameters()).device)
    model = prepare_unet_for_training(unet, channels_last=channels_last, compile=compile)
    params = [p for p in unet.parameters() if p.requires_grad]

    def step(latents: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if channels_last:
            latents = to_channels_last(latents)
        with autocast_context(mixed_precision, device):
            loss = diffusion_loss(model, scheduler, latents, labels, cfg, null_class_id, generator)
        loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step
