"""Small on-disk fixtures shared by several test files (imported as ``from fakes import ...``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_autoencoder(sample_size: int = 16):
    """An untrained diffusers AutoencoderKL for tests: RGB, widths (8, 16), 4 latent channels, down factor 2
    (weights from the current torch seed)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=sample_size,
    )


def write_tiny_latent_cache(vae_dir: Path, cache: Path, classes: list[str]) -> Path:
    """Save a tiny AutoencoderKL (16 px -> (4, 8, 8)) at ``vae_dir`` and a latent cache naming it at ``cache``.

    Documented layout (``<class>/<n>.npy`` + ``manifest.json``), 4 latents per class: class k has a distinct mean
    pattern plus noise, so a denoiser can learn the classes apart.
    """
    import torch

    torch.manual_seed(0)
    tiny_autoencoder().save_pretrained(vae_dir)
    rng = np.random.default_rng(0)
    files = []
    for name in classes:
        (cache / name).mkdir(parents=True)
        pattern = rng.standard_normal((4, 8, 8)).astype(np.float32)
        for i in range(4):
            np.save(cache / name / f"{i}.npy", (pattern + 0.3 * rng.standard_normal((4, 8, 8))).astype(np.float32))
            files.append(f"{name}/{i}.npy")
    manifest = {
        "format_version": 1,
        "classes": list(classes),
        "counts": {c: 4 for c in classes},
        "num_images": 4 * len(classes),
        "image_size": 16,
        "channels": 3,
        "latent_shape": [4, 8, 8],
        "autoencoder": {"source": str(vae_dir), "class_name": "AutoencoderKL", "content_hash": "test"},
        "scaling_factor": 1.0,
        "files": files,
    }
    from ldm.data.manifest import Manifest

    Manifest.from_dict(manifest).save(cache)  # as prepare writes it: paths inside a workspace relative to the cache
    return cache


# the training overrides of the tiny runs the tests train: the tiny UNet, few steps, no checkpoints, one cheap sample
TINY_TRAINING = [
    "unet.preset=tiny",
    "training.batch_size=4",
    "training.warmup_steps=1",
    "training.log_every=1",
    "training.sample_every=0",
    "training.checkpoint_every=0",
    "training.sample_scheduler=ddim",
    "training.sample_num_inference_steps=2",
    "training.sample_num_images=1",
]


def tiny_class_unet(num_classes: int, sample_size: int = 8):
    """An untrained class-conditional UNet2DModel on 4-channel latents (widths 8, 16; a null class for guidance)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        norm_num_groups=8,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=num_classes + 1,
    )


def write_tiny_pipeline(run: Path, vae_dir: Path, classes: list[str]) -> Path:
    """A run folder holding only ``pipeline/``: a tiny seeded UNet on 8x8x4 latents with the tiny autoencoder saved
    at ``vae_dir``, 1000 cosine training steps. Returns ``run``."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler

    from ldm.diffusion.pipeline import build_pipeline

    torch.manual_seed(0)
    unet = tiny_class_unet(len(classes), sample_size=8)
    vae = AutoencoderKL.from_pretrained(vae_dir)
    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    build_pipeline(unet, vae, train.config, list(classes), 0.7).save_pretrained(run / "pipeline")
    return run


def write_clip_tokenizer(folder: Path) -> Path:
    """A CLIP tokenizer that knows single characters only (no merges), saved at ``folder``: enough to turn any
    prompt into token ids offline. Its end-of-text token has the highest id, where CLIP pools the prompt."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)
    tok.save_pretrained(folder)
    return folder


def write_tiny_text2image(folder: Path, xl: bool = False) -> Path:
    """A tiny Stable Diffusion (``xl=False``) or SDXL pipeline with random weights, saved with ``save_pretrained``:
    the shapes of the real ones (UNet with cross-attention, a 2-level autoencoder, CLIP text encoders), 32x32 images
    by default. Built from the configs of diffusers' own fast tests."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder.parent / f"{folder.name}-tokenizer"))
    unet_extra = (
        dict(attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
             addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
             projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=1)
        if xl
        else dict(cross_attention_dim=32)
    )  # fmt: skip
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64) if not xl else (2, 4),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        **unet_extra,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")  # fmt: skip
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=32,
    )
    torch.manual_seed(0)
    text_config = CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                                 layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, pad_token_id=1,
                                 vocab_size=1000, hidden_act="gelu", projection_dim=32)  # fmt: skip
    text_encoder = CLIPTextModel(text_config)
    if xl:
        pipe = StableDiffusionXLPipeline(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                         tokenizer=tokenizer, text_encoder_2=CLIPTextModelWithProjection(text_config),
                                         tokenizer_2=tokenizer)  # fmt: skip
    else:
        pipe = StableDiffusionPipeline(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                       tokenizer=tokenizer, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


def write_tiny_lora(pipeline_folder: Path, folder: Path) -> Path:
    """LoRA weights (rank 4, random, non-zero) for the attention layers of the tiny pipeline's UNet, saved the way
    diffusers' training scripts save them (``save_lora_weights``)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(pipeline_folder / "unet")
    torch.manual_seed(1)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))  # fmt: skip
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    return folder
