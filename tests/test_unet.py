"""Denoiser presets and build_unet: the seed's exact architecture, overrides, errors, class conditioning."""

from __future__ import annotations

import pytest
import torch

from ldm.config import UNetConfig, load_config
from ldm.errors import UserError
from ldm.models.unet import PRESETS, build_unet, count_parameters, describe_unet


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tiny models gain nothing from two, and on a shared 2-core machine OpenMP's
    spin-waiting makes two threads up to 20x slower (measured: 5.3 s vs 0.26 s per tiny-model step)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_seed_preset_is_the_original_architecture():
    unet = build_unet(UNetConfig(preset="seed"), sample_size=16, in_channels=4, num_classes=3)
    c = unet.config
    assert c.layers_per_block == 2
    assert tuple(c.block_out_channels) == (32, 64, 128, 256)
    assert tuple(c.down_block_types) == ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    assert tuple(c.up_block_types) == ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    # Everything else at the diffusers default, as in the original project.
    assert c.attention_head_dim == 8 and c.norm_num_groups == 32 and c.mid_block_type == "UNetMidBlock2D"
    assert c.in_channels == c.out_channels == 4 and c.sample_size == 16
    assert c.num_class_embeds == 4  # 3 classes + the null class
    n = count_parameters(unet)
    assert 15.8e6 < n < 16.0e6, n  # 15,892,996 with 4 class embeddings of width 128
    assert unet.class_embedding.weight.shape == (4, 128)


def test_presets_are_ordered_by_size_and_tiny_is_tiny():
    from diffusers import UNet2DModel

    from ldm.models.unet import unet_kwargs

    sizes = {}
    for name in PRESETS:
        with torch.device("meta"):  # shapes only: the large preset has ~108 M parameters
            sizes[name] = count_parameters(UNet2DModel(**unet_kwargs(UNetConfig(preset=name), 16, 4, 5)))
    assert sizes["tiny"] < 0.5e6
    assert sizes["tiny"] < sizes["small"] < sizes["base"] < sizes["large"]
    assert sizes["seed"] < sizes["base"]
    assert set(PRESETS) == {"tiny", "small", "seed", "base", "large"}


def test_presets_are_the_choice_table():
    """The config, CLI and app accept the names of ldm.choices; every one has an architecture here, in that order."""
    from ldm.choices import UNET_PRESETS

    assert tuple(PRESETS) == UNET_PRESETS


def test_overrides_from_config_reach_the_model():
    cfg = load_config(None, ["unet.preset=tiny", "unet.kwargs={layers_per_block: 2, block_out_channels: [8, 16]}"])
    unet = build_unet(cfg.unet, sample_size=8, in_channels=3, num_classes=2)
    assert unet.config.layers_per_block == 2
    assert tuple(unet.config.block_out_channels) == (8, 16)
    assert unet.config.norm_num_groups == 8  # kept from the preset
    assert unet.config.out_channels == 3 and unet.config.num_class_embeds == 3


def test_unknown_argument_is_named_with_the_accepted_ones():
    with pytest.raises(UserError) as e:
        build_unet(UNetConfig(preset="tiny", kwargs={"layer_per_block": 2}), 8, 4, 2)
    msg = str(e.value)
    assert "'layer_per_block'" in msg and "layers_per_block" in msg and "block_out_channels" in msg


def test_data_fixed_arguments_cannot_be_overridden():
    with pytest.raises(UserError, match="in_channels"):
        build_unet(UNetConfig(preset="tiny", kwargs={"in_channels": 3}), 8, 4, 2)


def test_bad_group_count_is_a_clear_error():
    with pytest.raises(UserError, match="norm_num_groups"):
        build_unet(UNetConfig(preset="tiny", kwargs={"block_out_channels": [12, 20]}), 8, 4, 2)


def test_bad_preset_is_a_clear_error():
    cfg = UNetConfig()
    cfg.preset = "huge"  # bypasses the config's own Literal check, as a caller building UNetConfig by hand could
    with pytest.raises(UserError, match="tiny, small, seed, base, large"):
        build_unet(cfg, 8, 4, 2)


def test_output_shape_with_class_labels_including_the_null_class():
    torch.manual_seed(0)
    num_classes = 3
    unet = build_unet(UNetConfig(preset="tiny"), sample_size=8, in_channels=4, num_classes=num_classes).eval()
    x = torch.randn(4, 4, 8, 8)
    labels = torch.tensor([0, 1, 2, num_classes])  # the last one is the null class
    with torch.no_grad():
        out = unet(x, torch.tensor([0, 10, 500, 999]), class_labels=labels).sample
        assert out.shape == x.shape and torch.isfinite(out).all()
        # The class changes the prediction: the embedding is wired in.
        other = unet(x, torch.tensor([0, 10, 500, 999]), class_labels=torch.tensor([1, 2, 0, 0])).sample
    assert not torch.allclose(out, other)
    with pytest.raises(IndexError):
        unet(x, torch.tensor([0, 0, 0, 0]), class_labels=torch.tensor([0, 1, 2, num_classes + 1]))


def test_describe_unet_mentions_size_and_null_class():
    unet = build_unet(UNetConfig(preset="tiny"), sample_size=16, in_channels=4, num_classes=5)
    text = describe_unet(unet)
    assert "M params" in text and "null id 5" in text and "8x8:32+attn" in text


def test_attention_processor_switches_kernel_but_not_the_maths():
    from ldm.models.unet import set_attention_processor

    torch.manual_seed(0)
    unet = build_unet(UNetConfig(preset="tiny"), sample_size=8, in_channels=4, num_classes=2).eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([0, 2])
    with torch.no_grad():
        ours = unet(x, t, class_labels=y).sample
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours_bf16 = unet(x, t, class_labels=y).sample.float()
        from diffusers.models.attention_processor import AttnProcessor2_0

        set_attention_processor(unet, AttnProcessor2_0())
        ref = unet(x, t, class_labels=y).sample
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref_bf16 = unet(x, t, class_labels=y).sample.float()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours_bf16, ref_bf16, rtol=0.05, atol=0.05)  # bf16 has ~3 significant digits
