"""Optimiser pieces shared by both trainers: torch's fused Adam kernels, the diffusion optimiser, the learning rate.

opt = make_optimizer(unet.parameters(), cfg.training, device="cpu")
lr = peak * lr_factor(step, warmup_steps=200, schedule="cosine", horizon=10_000)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ldm.choices import LR_SCHEDULES, OPTIMIZERS
from ldm.errors import UserError

if TYPE_CHECKING:
    import torch

    from ldm.config import TrainingConfig


def optimizer_kwargs(device: str) -> dict[str, Any]:
    """Extra keyword arguments for torch's Adam/AdamW on ``device``: ``fused=True`` (one kernel for all parameters)
    on CPU and CUDA, ``{}`` elsewhere. Same maths as the default implementation."""
    dev = str(device).split(":")[0]
    return {"fused": True} if dev in ("cpu", "cuda") else {}


def make_optimizer(params: Any, tc: TrainingConfig, device: str = "cpu") -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay), Adam (L2 weight decay) or SGD with momentum, at ``tc.learning_rate``.

    Adam/AdamW use torch's fused kernel where available (same maths, one kernel for all parameters)."""
    import torch

    fused = optimizer_kwargs(device)
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=tc.learning_rate, betas=(tc.adam_beta1, tc.adam_beta2), weight_decay=tc.weight_decay, **fused
        )
    if tc.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=tc.learning_rate, betas=(tc.adam_beta1, tc.adam_beta2), weight_decay=tc.weight_decay, **fused
        )
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.learning_rate, momentum=tc.momentum, weight_decay=tc.weight_decay)
    raise UserError(f"training.optimizer: unknown {tc.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")


def lr_factor(
    step: int,
    warmup_steps: int,
    schedule: str = "cosine",
    horizon: int | None = None,
    time_fraction: float = 0.0,
    decay_during_warmup: bool = False,
) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based), in [0, 1].

    A linear warm-up ``(step + 1) / warmup_steps``, times 1 (``schedule="constant"``) or a cosine from 1 to 0
    (Loshchilov & Hutter 2017, https://arxiv.org/abs/1608.03983) over the run's progress: the larger of the step
    share (of ``horizon`` steps, when known) and ``time_fraction`` (the elapsed share of a ``max_minutes`` budget), so
    a time-budgeted run still ends at a low learning rate. The cosine starts when the warm-up ends (the diffusion
    trainer) or, with ``decay_during_warmup``, at step 0 and overlaps the warm-up (the autoencoder trainer).
    """
    w = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return w
    if schedule != "cosine":
        raise UserError(f"lr_schedule {schedule!r}; accepted: {', '.join(LR_SCHEDULES)}")
    start = 0 if decay_during_warmup else warmup_steps
    if step < start:
        return w
    progress = time_fraction
    if horizon is not None:
        progress = max(progress, (step - start) / max(1, horizon - start))
    return w * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
