"""Typed configuration: one dataclass per stage, loaded from YAML and dotted ``key=value`` overrides.

    cfg = load_config("configs/demo.yaml", ["training.batch_size=32", "unet.preset=seed"])
    print(to_yaml(cfg))

Every field has a default and a one-line comment. Unknown keys and values of the wrong type raise
:class:`ConfigError`, naming the key and what is accepted: a typo never silently trains the wrong model. The
``Literal`` types of choice fields are built from the tables of :mod:`ldm.choices`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from ldm.choices import (
    BETA_SCHEDULES,
    DOWN_FACTORS,
    LOSSES,
    LR_SCHEDULES,
    MIXED_PRECISION,
    OPTIMIZERS,
    PREDICTION_TYPES,
    RECON_LOSSES,
    SCALING_FACTOR_MODES,
    SCHEDULER_NAMES,
    TIMESTEP_SAMPLINGS,
    UNET_PRESETS,
)


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a value of the wrong type."""


@dataclass
class DataConfig:
    image_size: int = 64  # side in pixels after resize (shorter side) and centre crop
    channels: int = 3  # 3 = RGB, 1 = grey; every image is converted to this
    hflip: bool = False  # mirror images left-right: random flips for the autoencoder, mirrored latents in the cache
    holdout_fraction: float = 0.1  # share of images per class held out for reconstruction metrics
    num_workers: int = 0  # DataLoader worker processes (0 = load in the main process)


@dataclass
class AutoencoderConfig:
    source: str = ""  # hub id, local diffusers folder or train-vae run folder; "" = the one trained by train-vae
    # --- architecture (train-vae only): a diffusers AutoencoderKL ---
    down_factor: Literal[DOWN_FACTORS] = 4  # spatial downsampling of the latent (image 64 -> latent 16 at 4)
    latent_channels: int = 4  # channels of the latent
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # widths per level (4: 3 levels, 8: 4); narrow is fast
    layers_per_block: int = 1  # resnet blocks per level
    norm_num_groups: int = 16  # GroupNorm groups; must divide every width
    mid_block_attention: bool = False  # self-attention in the lowest-resolution block (slow on CPU, little gain here)
    # --- training (train-vae only) ---
    batch_size: int = 8  # images per step (small batches, many steps: best PSNR in a few CPU minutes, measured)
    crop_size: int = 0  # train on random crops of this side (a multiple of down_factor); 0 = whole images
    learning_rate: float = 2e-3  # peak AdamW learning rate
    warmup_steps: int = 50  # linear warm-up steps before cosine decay
    max_steps: int = 100_000  # upper bound on steps (max_minutes usually ends the run first)
    max_minutes: float = 5.0  # wall-clock budget of the training loop, in minutes (0 = no limit)
    recon_loss: Literal[RECON_LOSSES] = (
        "mse"  # pixel reconstruction loss (mse: what PSNR measures; l1 was slower here)
    )
    # RGB only: train in a colour space whose principal directions are scaled by (largest variance / their
    # variance) ** colour_balance (0 = plain RGB, 0.5 = fully whitened), folded back into a plain RGB autoencoder
    # when saved. Colour directions of small variance are otherwise learned late and suddenly (greys for saturated
    # backgrounds); 0.25 measured best (docs/benchmarks.md)
    colour_balance: float = 0.25
    kl_weight: float = 1e-6  # weight of the KL term (LDM paper: small, the latent stays near-deterministic)
    logvar_init: float = -6.0  # initial posterior log-variance: little sampling noise at first, so training is fast
    disc_weight: float = 0.0  # weight of the patch-GAN loss (0 = no discriminator)
    disc_start: int = 2000  # step at which the discriminator loss is switched on
    ema_decay: float = 0.99  # EMA of the weights; the EMA model is the one saved (0 = no EMA)
    disc_adaptive: bool = True  # VQGAN adaptive discriminator weight (balances gradients); False = fixed disc_weight
    sample_every: int = 200  # steps between reconstruction grids and held-out PSNR lines (0 = only at the end)
    log_every: int = 10  # steps between metrics.jsonl lines
    checkpoint_every: int = 1000  # steps between checkpoints, for --resume (0 = only at the end)
    keep_checkpoints: int = 2  # keep the newest K checkpoints
    mixed_precision: Literal[MIXED_PRECISION] = "auto"  # autocast; auto: bf16 on CUDA and bf16 CPUs; fp32 = no
    channels_last: bool = False  # channels-last memory format for the convolutions
    device: str = "auto"  # "auto" (cuda, mps, else cpu), or a torch device string
    seed: int = 0  # seed of weights, data order and held-out split
    scaling_factor: Union[float, Literal[SCALING_FACTOR_MODES]] = (
        "config"  # latent scale: VAE config's; "auto": unit var
    )


@dataclass
class UNetConfig:
    preset: Literal[UNET_PRESETS] = "small"  # architecture preset, see ldm/models/unet.py
    kwargs: dict[str, Any] = field(default_factory=dict)  # any UNet2DModel argument, overriding the preset


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 1000  # DDPM training steps
    beta_schedule: Literal[BETA_SCHEDULES] = "squaredcos_cap_v2"  # noise schedule
    # what the UNet predicts; v: clean samples after 1000 steps where epsilon's are blotchy (demo and att-faces-20)
    prediction_type: Literal[PREDICTION_TYPES] = "v_prediction"
    loss: Literal[LOSSES] = "mse"  # loss on the prediction ("l1" is the original's "MAE")
    huber_delta: float = 0.1  # delta of the huber loss (smooth_l1 beta), in prediction units
    snr_gamma: Optional[float] = 5.0  # min-SNR-gamma weighting (Hang et al. 2023); None = unweighted
    # noise levels seen in training: uniform over the steps, or EDM's log-normal sigma (with v-prediction and
    # snr_gamma None that is EDM's preconditioning and loss weight for unit-variance latents)
    timestep_sampling: Literal[TIMESTEP_SAMPLINGS] = "uniform"
    label_dropout: float = 0.1  # probability of replacing the class with the null class (for CFG)


@dataclass
class TrainingConfig:
    batch_size: int = 64  # latents per optimiser step (before accumulation)
    gradient_accumulation_steps: int = 1  # micro-batches per optimiser step
    optimizer: Literal[OPTIMIZERS] = "adamw"  # optimiser
    learning_rate: float = 3e-4  # peak learning rate
    weight_decay: float = 0.01  # decoupled (adamw) or L2 (adam, sgd) weight decay
    adam_beta1: float = 0.9  # Adam beta1
    adam_beta2: float = 0.999  # Adam beta2
    momentum: float = 0.9  # SGD momentum
    lr_schedule: Literal[LR_SCHEDULES] = "cosine"  # after warm-up
    warmup_steps: int = 200  # linear warm-up steps
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    max_steps: int = 0  # stop after this many optimiser steps (0 = use epochs / max_minutes)
    epochs: int = 0  # stop after this many passes over the cache (0 = use max_steps / max_minutes)
    max_minutes: float = 0.0  # wall-clock budget of the loop in minutes (0 = none)
    ema: bool = True  # keep an EMA of the weights (used for samples and export)
    ema_decay: float = 0.999  # EMA decay ceiling
    ema_warmup: bool = True  # EMA warm-up (decay grows with the step)
    ema_power: float = 0.75  # warm-up decay 1 - (1 + step) ** -power (3/4: .999 at 10k steps)
    mixed_precision: Literal[MIXED_PRECISION] = "auto"  # auto: bf16/fp16 on CUDA, measured on CPU
    channels_last: bool = False  # channels-last memory format (GroupNorm is much slower in it on CPU)
    hflip: bool = (
        False  # use the cache's mirrored latents (data.hflip) half of the time: faces and other symmetric data
    )
    log_every: int = 10  # steps between metrics.jsonl lines
    sample_every: int = 500  # steps between sample grids (0 = only at the end)
    sample_minutes: float = 2.0  # also a grid when this many minutes of training passed since the last (0 = off)
    sample_scheduler: Literal[SCHEDULER_NAMES] = "dpm++"  # grid sampler
    sample_num_inference_steps: int = 20  # denoising steps of the grids (cheap: they are a progress view)
    sample_guidance_scale: float = 3.0  # guidance scale of the grids (1 = off)
    sample_num_images: int = 6  # grid columns: images per class, seeds sample_seed.. (same noise in every row)
    sample_seed: int = 0  # seed of the grid's first column
    eval_every: int = 0  # steps between quick evaluations (small-sample KID, class accuracy); 0 = off
    eval_data: str = ""  # real images for eval_every ("" = the folder the latent cache was encoded from)
    eval_num_samples: int = 40  # images generated per quick evaluation (~0.5 s of Inception each on a CPU)
    checkpoint_every: int = 500  # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 3  # keep the newest K checkpoints
    seed: int = 0  # seed of weights, noise and data order


@dataclass
class SamplingConfig:
    scheduler: Literal[SCHEDULER_NAMES] = "dpm++"  # sampler
    num_inference_steps: int = 25  # denoising steps
    guidance_scale: float = 3.0  # classifier-free guidance scale (1 = off)
    num_images: int = 4  # images per class
    seed: int = 0  # seed of the first image; image i uses seed + i
    snapshot_timesteps: tuple[int, ...] = (999, 700, 500, 200, 150, 120, 100, 80, 60, 40, 20, 0)  # snapshot figure
    negative_class: str = ""  # class to steer guidance away from ("" = none: the null class)
    batch_size: int = 16  # images per UNet call (a CFG call holds twice as many)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


# ---------------------------------------------------------------------------------------------------------------------
# type checking and coercion


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key`` and what is accepted."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config key '{key}': got {value!r} ({type(value).__name__}); accepted: {_describe(tp)}")
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and not isinstance(value, bool):
            return value
        if isinstance(value, str):  # numeric literals given as strings from the command line
            for c in choices:
                if str(c) == value:
                    return c
        if isinstance(value, bool) and ("yes" if value else "no") in choices:
            return "yes" if value else "no"  # YAML reads an unquoted no (yes) as a bool: training.mixed_precision=no
        raise bad
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
            raise bad
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise bad
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad
        (inner, *_) = typing.get_args(tp)
        return tuple(_coerce(v, inner, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        try:
            number = float(value)
        except ValueError:
            raise bad from None
        if not math.isfinite(number):  # nan/inf would train nothing, or forever
            raise ConfigError(f"config key '{key}': got {value!r}; accepted: a finite number")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise bad


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(d: dict[str, Any] | None, cls: type = Config, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking every key and type."""
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {d!r}")
    hints = _section_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in d.items():
        if key not in names:
            where = prefix.rstrip(".") or "the top level"
            raise ConfigError(f"unknown config key '{prefix}{key}'; accepted in {where}: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(value, tp, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), ready for YAML or JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config dict (``to_dict`` or a YAML file's) as ``{"section.key": value}``; ``unet.kwargs`` stays one value."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.batch_size=32"`` -> (["training", "batch_size"], 32). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value (e.g. training.batch_size=32)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key; expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict (copied); validation happens in :func:`from_dict`."""
    import copy

    d = copy.deepcopy(d)
    for text in overrides:
        parts, value = parse_override(text)
        node = d
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {} if node.get(p) is None else node[p]
                if not isinstance(node[p], dict):
                    raise ConfigError(f"override {text!r}: '{p}' is not a section")
            node = node[p]
        node[parts[-1]] = value
    return d


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then dotted ``overrides``."""
    d: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(d).__name__}")
    d = to_dict(from_dict(d))  # validate the file before overrides, so errors name the file's key
    d = apply_overrides(d, overrides or [])
    return from_dict(d)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from ldm.utils import atomic_write_text

    atomic_write_text(Path(path), to_yaml(cfg))
