"""Every list of accepted values, written once.

    from ldm.choices import SCHEDULERS, LOSSES, LOSS_LABELS
    list(SCHEDULERS)          # ['dpm++', 'ddim', 'ddpm', 'euler', 'euler_a', 'heun', 'unipc']
    LOSS_LABELS["l1"]         # 'MAE': what the app shows for diffusion.loss=l1

Config validation (:mod:`ldm.config` builds its ``Literal`` types from these tables), the library's own checks,
the CLI's help and checks (:mod:`ldm.commands`) and the app's dropdowns (:mod:`ldm.app`) all read them, so a new
sampler, loss or preset is added here and is accepted everywhere at once. A ``*_LABELS`` table maps a name to
the label the app shows where the two differ; the names are its keys, in the order the app lists them.
"""

from __future__ import annotations

from typing import Any

# Sampler name -> (diffusers scheduler class, overrides applied on top of the training scheduler's config).
# In the order the app lists them: the recommended one (and the default, SamplingConfig.scheduler) first.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    # DPM-Solver++(2M), Lu et al. 2022 (arXiv:2211.01095): multistep second order in data (x0) prediction
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "ddim": ("DDIMScheduler", {"set_alpha_to_one": True}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),  # Karras et al. 2022 (EDM), Algorithm 1 without churn
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),  # ancestral Euler (k-diffusion), stochastic
    "heun": ("HeunDiscreteScheduler", {}),  # Karras et al. 2022 (EDM), Algorithm 1: 2nd order, 2 evals per step
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2}),  # Zhao et al. 2023 (arXiv:2302.04867)
}
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULERS)

# UNet2DModel presets, smallest first (unet.preset); their keyword arguments are ldm.models.unet.PRESETS
UNET_PRESETS: tuple[str, ...] = ("tiny", "small", "seed", "base", "large")

# Loss on the UNet's prediction (diffusion.loss) -> the app's label; "l1" is the original project's "MAE"
LOSS_LABELS: dict[str, str] = {"mse": "MSE", "l1": "MAE", "huber": "Huber"}
LOSSES: tuple[str, ...] = tuple(LOSS_LABELS)

# What the UNet predicts (diffusion.prediction_type), in diffusers' words
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")

# Noise schedules of diffusers' DDPMScheduler (diffusion.beta_schedule)
BETA_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2")

# How training draws noise levels (diffusion.timestep_sampling): uniform over the DDPM steps, or EDM's log-normal
# over sigma (Karras et al. 2022, P_mean -1.2, P_std 1.2) mapped to the nearest step
TIMESTEP_SAMPLINGS: tuple[str, ...] = ("uniform", "lognormal")

# Optimiser (training.optimizer) -> the app's label
OPTIMIZER_LABELS: dict[str, str] = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}
OPTIMIZERS: tuple[str, ...] = tuple(OPTIMIZER_LABELS)

# Learning-rate schedule after warm-up (training.lr_schedule)
LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant")

# Mixed precision of both trainers (training.mixed_precision, autoencoder.mixed_precision), in accelerate's words
# ("no" = float32); "fp32" is the autoencoder's older spelling of "no" (ldm.device.normalize_precision)
MIXED_PRECISION: tuple[str, ...] = ("auto", "no", "bf16", "fp16", "fp32")

# Pixel reconstruction loss of autoencoder training (autoencoder.recon_loss)
RECON_LOSSES: tuple[str, ...] = ("l1", "mse")

# Spatial downsampling of a trained autoencoder (autoencoder.down_factor)
DOWN_FACTORS: tuple[int, ...] = (4, 8)

# Latent scale (autoencoder.scaling_factor) when not a number: the autoencoder config's, or unit variance measured
SCALING_FACTOR_MODES: tuple[str, ...] = ("config", "auto")
