"""The autoencoder (stage 1 of latent diffusion): load a pretrained one or one trained here, encode, decode, build.

    ae = load_autoencoder("runs/vae")           # or a diffusers folder, a pipeline folder, a hub id
    z = encode(ae, images)                      # images (B, C, H, W) in [-1, 1] -> unscaled latents (B, c, h, w)
    x = decode(ae, z)                           # -> images in [-1, 1]

:func:`build_autoencoder_kl` makes a fresh diffusers ``AutoencoderKL`` from the config and
:class:`PatchDiscriminator` the optional adversary; training them is :mod:`ldm.training.autoencoder`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldm.errors import UserError

if TYPE_CHECKING:
    import torch

    from ldm.config import AutoencoderConfig

AUTOENCODER_CLASSES = ("AutoencoderKL", "AutoencoderTiny")
# files fetched from the hub: the autoencoder itself, or only the vae/ of a pipeline repository
_HUB_PATTERNS = [
    "config.json",
    "model_index.json",
    "diffusion_pytorch_model*.safetensors",
    "diffusion_pytorch_model*.safetensors.index.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model*.safetensors",
    "vae/diffusion_pytorch_model*.safetensors.index.json",
]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------------------------------------------------------------
# loading


@dataclass
class LoadedAutoencoder:
    """A frozen autoencoder and what the rest of the library needs to know about it.

    ``model`` is a diffusers ``AutoencoderKL`` or ``AutoencoderTiny`` in eval mode with gradients off; ``folder`` is
    the local folder it was loaded from (for a hub id, the downloaded snapshot's); ``content_hash`` is
    :func:`ldm.utils.hash_folder` of that folder; ``scaling_factor`` is the model config's (``None`` when absent).
    """

    model: Any
    source: str
    content_hash: str
    scaling_factor: float | None
    down_factor: int
    latent_channels: int
    in_channels: int
    folder: Path | None = None

    @property
    def class_name(self) -> str:
        return type(self.model).__name__

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return d


def _model_folder(folder: Path, source: str) -> Path:
    """The folder holding the autoencoder's config.json: ``folder`` itself, or its ``vae/`` (pipeline, run folder)."""
    accepted = (
        "accepted: a diffusers AutoencoderKL/AutoencoderTiny folder (config.json + weights), a pipeline folder "
        "with a vae/ subfolder, an `ldm train-vae` run folder, or a hub id such as stabilityai/sd-vae-ft-ema"
    )
    from ldm.run_folder import RunFolder

    run = RunFolder(folder)
    if run.has_vae:
        return run.vae_dir
    if (folder / "config.json").is_file():
        name = _read_json(folder / "config.json").get("_class_name")
        if name in AUTOENCODER_CLASSES:
            return folder
        raise UserError(
            f"{source}: config.json describes a {name or 'model without _class_name'}, not an autoencoder; {accepted}"
        )
    if (folder / "model_index.json").is_file():
        raise UserError(f"{source}: this pipeline folder has no vae/ subfolder with a config.json; {accepted}")
    if run.config_path.is_file():
        raise UserError(
            f"{source}: this run folder has no vae/ yet (is `ldm train-vae` still running, or did it fail?); "
            f"{accepted}"
        )
    raise UserError(f"{source}: not an autoencoder folder (no config.json, vae/ or model_index.json); {accepted}")


def _download(repo_id: str) -> Path:
    """Snapshot of a hub repository's autoencoder files (uses the local hub cache when it has them)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except Exception as e:  # no network, unknown repo, gated repo...: all mean "give me a local folder"
        raise UserError(
            f"could not download the autoencoder '{repo_id}' from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no details'}); pass a local folder instead (a diffusers "
            f"autoencoder folder, a pipeline folder or an `ldm train-vae` run folder)"
        ) from None


def load_autoencoder(source: str | Path, device: str | torch.device = "cpu", dtype: Any = None) -> LoadedAutoencoder:
    """Load a frozen autoencoder from a local folder or a hub id.

    ``source``: a diffusers ``AutoencoderKL``/``AutoencoderTiny`` folder (``config.json`` + safetensors), a pipeline
    folder (its ``vae/``), an ``ldm train-vae`` run folder (its ``vae/``), or a hub id (``owner/name``, either an
    autoencoder repository or a pipeline repository with ``vae/``). ``dtype`` defaults to float32. Raises
    :class:`UserError` for anything else, naming what is accepted.
    """
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny

    from ldm.utils import hash_folder

    dtype = dtype or torch.float32
    text = str(source)
    if not text.strip():
        raise UserError("no autoencoder given: pass a folder (or hub id) with --vae or autoencoder.source")
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{text}: is a file; an autoencoder is a folder (config.json + weights)")
        folder = _model_folder(path, text)
    elif _HUB_ID.match(text) and not text.startswith((".", "~")):
        folder = _model_folder(_download(text), text)
    else:
        raise UserError(
            f"autoencoder source '{text}' is neither an existing folder nor a hub id of the form owner/name"
        )

    name = _read_json(folder / "config.json").get("_class_name")
    cls = {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny}.get(name)
    if cls is None:
        raise UserError(
            f"{folder}: _class_name {name!r} is not a supported autoencoder ({', '.join(AUTOENCODER_CLASSES)})"
        )
    try:
        model = cls.from_pretrained(folder, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as e:  # missing/corrupt weights, config mismatch
        raise UserError(f"cannot load the {name} in {folder}: {e}") from None
    model = model.to(device).eval().requires_grad_(False)
    cfg = model.config
    # both classes downsample by 2 at every level but the first
    widths = cfg.block_out_channels if name == "AutoencoderKL" else cfg.encoder_block_out_channels
    sf = getattr(cfg, "scaling_factor", None)
    return LoadedAutoencoder(
        model=model,
        source=text,
        content_hash=hash_folder(folder),
        scaling_factor=float(sf) if sf is not None else None,
        down_factor=2 ** (len(widths) - 1),
        latent_channels=int(cfg.latent_channels),
        in_channels=int(cfg.in_channels),
        folder=folder,
    )


def _is_tiny(model: Any) -> bool:
    return type(model).__name__ == "AutoencoderTiny"


def _in_batches(
    ae: LoadedAutoencoder | Any, x: torch.Tensor, batch_size: int, fn: Callable[[Any, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``fn(model, batch)`` over ``x`` in batches of ``batch_size`` (each moved to the model's device and dtype) under
    ``torch.no_grad``; the results concatenated as float32 on ``x``'s device."""
    import torch

    model = ae.model if isinstance(ae, LoadedAutoencoder) else ae
    p = next(model.parameters())
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            out.append(fn(model, x[i : i + batch_size].to(p.device, p.dtype)).float().to(x.device))
    return torch.cat(out) if out else x.new_zeros((0,))


def _encode_batch(model: Any, x: torch.Tensor) -> torch.Tensor:
    return model.encode(x).latents if _is_tiny(model) else model.encode(x).latent_dist.mean


def _decode_batch(model: Any, z: torch.Tensor) -> torch.Tensor:
    return model.decode(z).sample.float().clamp(-1, 1)


def encode(ae: LoadedAutoencoder | Any, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Images ``(B, C, H, W)`` in [-1, 1] -> **unscaled** latents ``(B, c, H/f, W/f)`` float32 on the images' device.

    ``AutoencoderKL``: the posterior mean; ``AutoencoderTiny``: its latents. ``ae`` is a :class:`LoadedAutoencoder`
    or a bare diffusers autoencoder. Runs in batches of ``batch_size`` under ``torch.no_grad``.
    """
    return _in_batches(ae, images, batch_size, _encode_batch)


def decode(ae: LoadedAutoencoder | Any, latents: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Unscaled latents ``(B, c, h, w)`` -> images ``(B, C, h*f, w*f)`` float32 in [-1, 1] (clamped), on the
    latents' device. Runs in batches of ``batch_size`` under ``torch.no_grad``."""
    return _in_batches(ae, latents, batch_size, _decode_batch)


# ---------------------------------------------------------------------------------------------------------------------
# building and training


def build_autoencoder_kl(cfg: AutoencoderConfig, in_channels: int, image_size: int) -> Any:
    """A fresh diffusers ``AutoencoderKL`` from the architecture fields of ``cfg``.

    ``log2(down_factor) + 1`` levels; ``block_out_channels`` gives one width per level (a shorter list repeats its
    last width). Raises :class:`UserError` for widths that ``norm_num_groups`` does not divide.
    """
    from diffusers import AutoencoderKL

    if cfg.down_factor not in (4, 8):
        raise UserError(f"autoencoder.down_factor must be 4 or 8, got {cfg.down_factor}")
    levels = int(math.log2(cfg.down_factor)) + 1
    widths = list(cfg.block_out_channels)
    if not widths or len(widths) > levels:
        raise UserError(
            f"autoencoder.block_out_channels={widths} has {len(widths)} widths, but down_factor={cfg.down_factor} "
            f"needs {levels} (one per level; a shorter list repeats its last width)"
        )
    widths += [widths[-1]] * (levels - len(widths))
    bad = [w for w in widths if w % cfg.norm_num_groups]
    if bad:
        raise UserError(
            f"autoencoder.norm_num_groups={cfg.norm_num_groups} must divide every width of "
            f"autoencoder.block_out_channels={widths} (it does not divide {bad})"
        )
    if cfg.latent_channels < 1 or cfg.layers_per_block < 1:
        raise UserError("autoencoder.latent_channels and autoencoder.layers_per_block must be at least 1")
    if image_size % cfg.down_factor:
        raise UserError(f"data.image_size={image_size} is not a multiple of autoencoder.down_factor={cfg.down_factor}")
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(widths),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=image_size,
        mid_block_add_attention=cfg.mid_block_attention,
    )


class PatchDiscriminator:
    """Builder of a small PatchGAN discriminator (Isola et al. 2017): strided 4x4 convs, one logit per patch."""

    @staticmethod
    def build(in_channels: int, width: int = 32, n_layers: int = 2) -> torch.nn.Module:
        import torch.nn as nn

        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for i in range(1, n_layers + 1):
            nxt = width * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(ch, nxt, 4, stride, 1, bias=False), nn.GroupNorm(8, nxt), nn.LeakyReLU(0.2, True)]
            ch = nxt
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        return nn.Sequential(*layers)
