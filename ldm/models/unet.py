"""Denoiser: a diffusers ``UNet2DModel``, class-conditioned through a class embedding with one extra null class.

    from ldm.config import UNetConfig
    unet = build_unet(UNetConfig(preset="small"), sample_size=16, in_channels=4, num_classes=5)
    print(describe_unet(unet))

The null class (id ``num_classes``, the last embedding row) is the "no class" input of classifier-free guidance
(Ho & Salimans 2022, https://arxiv.org/abs/2207.12598): the trainer replaces labels with it at random, the sampler
mixes the conditional and null predictions. Presets are plain ``UNet2DModel`` keyword arguments; any argument can
be overridden from the config (``unet.kwargs``), so nothing here wraps or subclasses the diffusers model.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from ldm.errors import UserError

if TYPE_CHECKING:
    from diffusers import UNet2DModel

    from ldm.config import UNetConfig

# The seed's four levels: plain convolutions at the top level, self-attention at the three below.
_ATTENTION_BELOW_TOP = dict(
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)

# Keyword arguments of UNet2DModel per preset. Sizes below are with 4 latent channels and 6 class embeddings.
PRESETS: dict[str, dict[str, Any]] = {
    # For tests and smoke runs: two levels, one attention level, ~0.2 M parameters.
    "tiny": dict(
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    ),
    # For 16x16 latents on a CPU: the seed's first three levels (16, 8, 4), attention only at 4x4. Attention at
    # 16x16 costs the most and helps the least at this size; dropping it at 8x8 too gave 1.39x the steps in 15 min
    # and a better model (att-faces-20: KID 0.031 vs 0.053, docs/benchmarks.md). Fewer FLOPs per step than seed, so
    # a few minutes of CPU buy more steps.
    "small": dict(
        layers_per_block=2,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        attention_head_dim=32,
    ),
    # The original project's exact UNet2DModel (diffusers defaults for everything not listed), ~15.9 M parameters.
    "seed": dict(
        layers_per_block=2,
        block_out_channels=(32, 64, 128, 256),
        **_ATTENTION_BELOW_TOP,
    ),
    # Wider than seed at every level, attention below the top level: for GPUs or long CPU runs.
    "base": dict(
        layers_per_block=2,
        block_out_channels=(64, 128, 256, 256),
        **_ATTENTION_BELOW_TOP,
        attention_head_dim=32,
    ),
    # GPU-sized: twice base's width.
    "large": dict(
        layers_per_block=2,
        block_out_channels=(128, 256, 512, 512),
        **_ATTENTION_BELOW_TOP,
        attention_head_dim=64,
    ),
}

# Set by build_unet from the data; overriding them in unet.kwargs would silently break the model's contract.
_RESERVED = ("sample_size", "in_channels", "out_channels", "num_class_embeds")


def unet_kwargs(cfg: UNetConfig, sample_size: int, in_channels: int, num_classes: int) -> dict[str, Any]:
    """The full ``UNet2DModel`` keyword arguments for ``cfg`` (preset, then ``cfg.kwargs``), checked by name.

    Raises :class:`UserError` for an unknown preset, an argument ``UNet2DModel`` does not take (listing the
    accepted ones), or an attempt to override an argument fixed by the data (``in_channels``, ...).
    """
    from diffusers import UNet2DModel

    if cfg.preset not in PRESETS:
        raise UserError(f"unknown unet.preset {cfg.preset!r}; accepted: {', '.join(PRESETS)}")
    accepted = [p for p in inspect.signature(UNet2DModel.__init__).parameters if p != "self"]
    for key in cfg.kwargs:
        if key not in accepted:
            raise UserError(
                f"unet.kwargs: UNet2DModel has no argument {key!r}; accepted: {', '.join(sorted(accepted))}"
            )
        if key in _RESERVED:
            raise UserError(
                f"unet.kwargs: {key!r} is set from the latent cache and class count and cannot be overridden; "
                f"overridable: {', '.join(sorted(set(accepted) - set(_RESERVED)))}"
            )
    if num_classes < 1:
        raise UserError(f"need at least one class to build a class-conditional UNet, got num_classes={num_classes}")
    kwargs = dict(PRESETS[cfg.preset])
    kwargs.update(cfg.kwargs)
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    kwargs.update(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        num_class_embeds=num_classes + 1,  # + the null class, id num_classes
    )
    return kwargs


def build_unet(cfg: UNetConfig, sample_size: int, in_channels: int, num_classes: int) -> UNet2DModel:
    """A freshly initialised class-conditional ``UNet2DModel`` (float32, on CPU, train mode).

    Args:
        cfg: preset name and ``UNet2DModel`` argument overrides.
        sample_size: latent side ``h`` (latents are ``(B, in_channels, h, h)``).
        in_channels: latent channels; the output has as many (the predicted noise or velocity).
        num_classes: number of real classes; the model gets ``num_classes + 1`` embeddings, the last one
            (id ``num_classes``) being the null class used for classifier-free guidance.

    The model maps ``(sample (B, C, h, w), timestep (B,) or scalar, class_labels LongTensor (B,) in
    [0, num_classes])`` to ``.sample`` of shape ``(B, C, h, w)``.
    """
    from diffusers import UNet2DModel

    kwargs = unet_kwargs(cfg, sample_size, in_channels, num_classes)
    widths = kwargs.get("block_out_channels", ())
    groups = kwargs.get("norm_num_groups", 32)
    bad = [w for w in widths if w % groups]
    if bad:
        raise UserError(f"unet: norm_num_groups={groups} must divide every block_out_channels width; {bad} do not")
    if len(kwargs.get("down_block_types", ())) != len(widths) or len(kwargs.get("up_block_types", ())) != len(widths):
        raise UserError(
            f"unet: down_block_types and up_block_types need one entry per block_out_channels width ({len(widths)})"
        )
    try:
        unet = UNet2DModel(**kwargs)
    except (ValueError, TypeError) as e:
        raise UserError(f"unet: UNet2DModel rejected the arguments {kwargs}: {e}") from None
    set_attention_processor(unet)
    return unet


class CPUFriendlyAttnProcessor:
    """Attention that picks the fastest kernel per call: the same maths as diffusers' ``AttnProcessor2_0``.

    On CPU under bfloat16 (autocast or bf16 tensors) PyTorch's fused SDPA kernel is several times slower than the
    explicit softmax(QK^T)V of diffusers' ``AttnProcessor`` for the small heads of these UNets (head dim 8 in the seed
    preset; numbers in docs/benchmarks.md), so that path uses ``AttnProcessor`` (softmax in float32,
    ``upcast_softmax``); everywhere else (float32, CUDA) it is ``AttnProcessor2_0``.
    Not saved with the model: ``save_pretrained`` folders are plain diffusers ones.
    """

    def __init__(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        self.sdpa = AttnProcessor2_0()
        self.math = AttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        import torch

        low = hidden_states.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")
        proc = self.math if hidden_states.device.type == "cpu" and low else self.sdpa
        return proc(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


def set_attention_processor(unet: Any, processor: Any = None) -> None:
    """Give every attention layer of ``unet`` ``processor`` (default: a :class:`CPUFriendlyAttnProcessor`)."""
    from diffusers.models.attention_processor import Attention

    processor = processor if processor is not None else CPUFriendlyAttnProcessor()
    for m in unet.modules():
        if isinstance(m, Attention):
            m.set_processor(processor)


def count_parameters(module: Any) -> int:
    """Number of parameters of a torch module."""
    return sum(p.numel() for p in module.parameters())


def describe_unet(unet: UNet2DModel) -> str:
    """One-paragraph summary: parameter count, widths, blocks per level, attention levels, class embeddings."""
    c = unet.config
    n = count_parameters(unet)
    res = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    levels = []
    for i, (w, kind) in enumerate(zip(c.block_out_channels, c.down_block_types)):
        side = res // (2**i) if res else "?"
        levels.append(f"{side}x{side}:{w}{'+attn' if 'Attn' in kind else ''}")
    return (
        f"UNet2DModel {n / 1e6:.2f} M params; {c.in_channels} -> {c.out_channels} channels, "
        f"{c.layers_per_block} resnet(s) per level; levels {' '.join(levels)}; "
        f"mid block {c.mid_block_type}; {c.num_class_embeds} class embeddings (null id {c.num_class_embeds - 1})"
        if c.num_class_embeds
        else f"UNet2DModel {n / 1e6:.2f} M params (unconditional)"
    )
