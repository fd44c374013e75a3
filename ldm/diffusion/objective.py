"""The diffusion objective: DDPM noise schedule and loss.

    scheduler = make_train_scheduler(cfg.diffusion)
    loss = diffusion_loss(unet, scheduler, latents, labels, cfg.diffusion, null_class_id=num_classes, generator=g)

The network and the schedule stay apart (as in diffusers): the scheduler only supplies ``alphas_cumprod``,
``add_noise`` and ``get_velocity``. Losses follow DDPM (Ho et al. 2020, https://arxiv.org/abs/2006.11239) with
the v-parameterisation of Salimans & Ho 2022 (https://arxiv.org/abs/2202.00512) and min-SNR-gamma weighting
of Hang et al. 2023 (https://arxiv.org/abs/2303.09556).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ldm.choices import BETA_SCHEDULES, LOSSES, PREDICTION_TYPES, TIMESTEP_SAMPLINGS
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


# EDM's training noise distribution, ln(sigma) ~ N(P_MEAN, P_STD^2) (Karras et al. 2022, Table 1: -1.2, 1.2 for
# pixels with sigma_data 0.5), shifted by ln 2 for our unit-variance latents (sigma_data 1): the same levels
# relative to the data
EDM_P_MEAN, EDM_P_STD = -1.2 + math.log(2.0), 1.2


def sample_timesteps(
    scheduler: DDPMScheduler, n: int, how: str, device: Any, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` training timesteps (int64): uniform over the steps, or EDM's log-normal sigma mapped to the nearest step.

    A DDPM step t has the VE noise level ``sigma_t = sqrt((1 - abar_t) / abar_t)``; ``lognormal`` draws sigma from
    EDM's distribution and takes the step whose sigma is closest in log space.
    """
    import torch

    num = scheduler.config.num_train_timesteps
    if how == "uniform":
        return torch.randint(0, num, (n,), device=device, generator=generator)
    if how == "lognormal":
        ac = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32).clamp(1e-12, 1.0)
        log_sigmas = 0.5 * torch.log((1.0 - ac).clamp_min(1e-20) / ac)  # increasing in t
        log_sigma = EDM_P_MEAN + EDM_P_STD * torch.randn(n, device=device, generator=generator)
        idx = torch.searchsorted(log_sigmas, log_sigma).clamp(1, num - 1)
        nearer_below = (log_sigma - log_sigmas[idx - 1]) < (log_sigmas[idx] - log_sigma)
        return torch.where(nearer_below, idx - 1, idx)
    raise UserError(f"diffusion.timestep_sampling {how!r}; accepted: {', '.join(TIMESTEP_SAMPLINGS)}")


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
    world: int = 1,
    rank: int = 0,
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
        world, rank: with several processes, each holding slice ``rank`` of a global batch of ``world`` equal
            slices: the random draws are made for the whole global batch (the same generator state on every
            process) and sliced, so N processes draw exactly what one process with the global batch draws.

    Steps: each label becomes the null class with probability ``cfg.label_dropout``; ``t ~ U{0..T-1}`` (or EDM's
    log-normal, ``cfg.timestep_sampling``);
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
    mine = slice(rank * b, (rank + 1) * b)  # this process's part of the global batch's draws
    if cfg.label_dropout > 0:
        drop = torch.rand(b * world, device=device, generator=generator)[mine] < cfg.label_dropout
        labels = torch.where(drop, torch.full_like(labels, null_class_id), labels)
    t = sample_timesteps(scheduler, b * world, cfg.timestep_sampling, device, generator)[mine]
    shape = (b * world, *latents.shape[1:])
    noise = torch.randn(shape, device=device, dtype=latents.dtype, generator=generator)[mine]
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
