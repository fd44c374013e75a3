"""Inference schedulers: a sampler name (``ddpm``, ``dpm++``, ...) -> a diffusers scheduler on the training schedule.

    from ldm.diffusion.schedulers import make_scheduler
    scheduler = make_scheduler("dpm++", pipe.scheduler.config)

The scheduler owns the update rule of a denoising step; the pipeline (:mod:`ldm.diffusion.pipeline`) owns the loop.
"""

from __future__ import annotations

from typing import Any

from ldm.choices import SCHEDULERS
from ldm.errors import UserError


def make_scheduler(name: str, train_scheduler_config: Any) -> Any:
    """Build the inference scheduler ``name`` from the training scheduler's config (a dict or FrozenDict).

    Accepted names: the keys of :data:`ldm.choices.SCHEDULERS` (the one table of sampler names and their diffusers
    classes). The noise schedule (betas, number of training steps, prediction type) comes from the training config so
    sampling matches training.
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
