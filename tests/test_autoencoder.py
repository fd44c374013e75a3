"""The autoencoder: loading every kind of source, encode/decode, and a few real train-vae steps on the AT&T faces."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ldm.config import AutoencoderConfig, ConfigError, load_config
from ldm.errors import UserError
from ldm.figures import recon_grid
from ldm.models.autoencoder import build_autoencoder_kl, decode, encode, load_autoencoder
from ldm.training.autoencoder import train_vae
from ldm.utils import hash_folder

TINY = [
    "data.image_size=16",
    "data.channels=1",
    "autoencoder.block_out_channels=[8,16]",
    "autoencoder.norm_num_groups=8",
    "autoencoder.batch_size=8",
    "autoencoder.max_steps=4",
    "autoencoder.warmup_steps=2",
    "autoencoder.sample_every=2",
    "autoencoder.log_every=1",
    "autoencoder.mixed_precision=fp32",
    "autoencoder.device=cpu",
]


@pytest.fixture(autouse=True)
def _one_thread():
    # the test machine is shared: one thread avoids oversubscription stalls and keeps results deterministic
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_train_vae_on_real_faces_writes_a_loadable_run(att_faces: Path, tmp_path: Path):
    from diffusers import AutoencoderKL

    out = tmp_path / "run"
    cfg = load_config(None, TINY)
    result = train_vae(cfg, att_faces, out, progress=False)

    # resolved config, same values as the config object
    assert yaml.safe_load((out / "config.yaml").read_text())["autoencoder"]["block_out_channels"] == [8, 16]
    # metrics: a line per step and held-out PSNR at each grid
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in lines if "loss" in r)
    assert [r["step"] for r in lines if "holdout" in r and not r.get("final")] == [2, 4]
    # reconstruction grids: 8 originals above 8 reconstructions, 16x16 each with 2-pixel gaps
    assert sorted(p.name for p in (out / "recon").iterdir()) == ["step-000002.png", "step-000004.png"]
    with Image.open(out / "recon" / "step-000004.png") as im:
        assert im.size == (8 * 18 + 2, 2 * 18 + 2 + 2)

    # eval.json: held-out PSNR/SSIM of the EMA weights and of the raw ones; 2 of each person's 10 faces held out
    ev = json.loads((out / "eval.json").read_text())
    assert ev == json.loads(json.dumps(result))
    assert ev["steps"] == 4 and ev["num_holdout"] == 20 and ev["num_train"] == 180 and not ev["stopped_early"]
    for k in ("psnr", "ssim", "psnr_raw", "ssim_raw"):
        assert math.isfinite(ev[k]), k
    assert 0 < ev["psnr"] < 60 and -1 < ev["ssim"] <= 1
    assert ev["latent_shape"] == [4, 4, 4]

    # vae/ loads with plain diffusers, with the unit-variance scaling factor in its config
    vae = AutoencoderKL.from_pretrained(out / "vae")
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert vae.config.scaling_factor == pytest.approx(ev["scaling_factor"])
    assert vae.config.in_channels == 1 and tuple(vae.config.block_out_channels) == (8, 16, 16)

    # ... and with load_autoencoder from the run folder; the scaled training latents have unit std
    ae = load_autoencoder(out)
    assert ae.class_name == "AutoencoderKL" and ae.folder == out / "vae"
    assert (ae.down_factor, ae.latent_channels, ae.in_channels) == (4, 4, 1)
    assert ae.scaling_factor == pytest.approx(ev["scaling_factor"])
    assert ae.content_hash == hash_folder(out / "vae")
    from ldm.data.folders import holdout_split, load_image, scan_image_folder

    scan = scan_image_folder(att_faces)
    train_idx, _ = holdout_split(scan.samples, cfg.data.holdout_fraction, cfg.autoencoder.seed)
    x = torch.stack([load_image(scan.samples[i][0], 16, 1) for i in train_idx])
    z = encode(ae, x)
    assert z.shape == (180, 4, 4, 4)
    assert float((z * ae.scaling_factor).double().std()) == pytest.approx(1.0, rel=1e-3)
    y = decode(ae, z)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1


def test_should_stop_ends_early_but_saves_and_config_comes_first(att_faces: Path, tmp_path: Path):
    out = tmp_path / "run"
    seen = []

    def stop() -> bool:  # polled after every step, as in the diffusion trainer
        seen.append((out / "config.yaml").is_file())
        return len(seen) >= 2  # two steps, then stop

    cfg = load_config(None, TINY + ["autoencoder.max_steps=1000", "autoencoder.ema_decay=0"])
    result = train_vae(cfg, att_faces, out, progress=False, should_stop=stop)
    assert seen[0] is True  # config.yaml was there before the first step
    assert result["stopped_early"] and result["steps"] == 2
    assert "psnr_raw" not in result  # no EMA: the raw weights are the saved ones
    assert load_autoencoder(out).down_factor == 4
    assert (out / "recon" / "step-000002.png").is_file()


def test_time_budget_ends_the_run(att_faces: Path, tmp_path: Path):
    cfg = load_config(None, TINY + ["autoencoder.max_steps=100000", "autoencoder.max_minutes=0.0001"])
    result = train_vae(cfg, att_faces, tmp_path / "run", progress=False)
    assert result["steps"] <= 2 and (tmp_path / "run" / "vae" / "config.json").is_file()


def test_crop_training_sees_crops_but_evaluates_and_saves_whole_images(att_faces: Path, tmp_path: Path, monkeypatch):
    from diffusers import AutoencoderKL

    shapes = []
    real_encode = AutoencoderKL.encode

    def spy(self, x, *a, **k):
        if self.training:
            shapes.append(tuple(x.shape[-2:]))
        return real_encode(self, x, *a, **k)

    monkeypatch.setattr(AutoencoderKL, "encode", spy)
    cfg = load_config(None, TINY + ["autoencoder.crop_size=8"])
    result = train_vae(cfg, att_faces, tmp_path / "run", progress=False)
    assert shapes == [(8, 8)] * 4  # training steps: 8x8 windows of the 16x16 images
    assert result["latent_shape"] == [4, 4, 4] and math.isfinite(result["psnr"])  # held-out: whole images


@pytest.mark.parametrize("size", [6, 20, 2])
def test_bad_crop_size_is_a_clear_error_before_training(att_faces: Path, tmp_path: Path, size: int):
    cfg = load_config(None, TINY + [f"autoencoder.crop_size={size}"])
    with pytest.raises(UserError, match=r"crop_size=.*multiple of down_factor \(4\) between 4 and data.image_size"):
        train_vae(cfg, att_faces, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "vae").exists()


def test_build_autoencoder_levels_and_errors():
    m = build_autoencoder_kl(AutoencoderConfig(down_factor=8, block_out_channels=(8, 16), norm_num_groups=8), 3, 32)
    assert tuple(m.config.block_out_channels) == (8, 16, 16, 16)  # 4 levels, last width repeated
    assert not m.config.mid_block_add_attention
    with pytest.raises(UserError, match="norm_num_groups=32 must divide"):
        build_autoencoder_kl(AutoencoderConfig(block_out_channels=(8, 16), norm_num_groups=32), 3, 32)
    with pytest.raises(UserError, match="needs 3"):
        build_autoencoder_kl(AutoencoderConfig(block_out_channels=(8, 8, 8, 8), norm_num_groups=8), 3, 32)
    with pytest.raises(UserError, match="not a multiple"):
        build_autoencoder_kl(AutoencoderConfig(block_out_channels=(8,), norm_num_groups=8), 3, 30)


def test_encode_decode_shapes_ranges_and_determinism(tiny_vae_dir: Path):
    ae = load_autoencoder(str(tiny_vae_dir))
    assert (ae.down_factor, ae.latent_channels, ae.in_channels) == (2, 4, 3)
    assert ae.scaling_factor == pytest.approx(0.18215)  # the diffusers default in the config
    assert not any(p.requires_grad for p in ae.model.parameters()) and not ae.model.training
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    z = encode(ae, x, batch_size=2)
    assert z.shape == (5, 4, 8, 8) and z.dtype == torch.float32
    assert torch.allclose(z, encode(ae, x), atol=1e-5)  # the posterior mean: no sampling; batching is irrelevant
    y = decode(ae, z * 50, batch_size=3)  # far out of range latents still decode into [-1, 1]
    assert y.shape == (5, 3, 16, 16) and y.min() >= -1 and y.max() <= 1


def test_load_autoencoder_tiny(tmp_path: Path):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8),
        decoder_block_out_channels=(8, 8, 8),
        num_encoder_blocks=(1, 1, 1),
        num_decoder_blocks=(1, 1, 1),
        latent_channels=4,
    ).save_pretrained(tmp_path / "taesd")
    ae = load_autoencoder(tmp_path / "taesd")
    assert ae.class_name == "AutoencoderTiny"
    assert (ae.down_factor, ae.latent_channels, ae.in_channels, ae.scaling_factor) == (4, 4, 3, 1.0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = encode(ae, x)
    assert z.shape == (2, 4, 4, 4)
    y = decode(ae, z)
    assert y.shape == (2, 3, 16, 16) and y.min() >= -1 and y.max() <= 1


def test_load_from_pipeline_folder(tiny_vae_dir: Path, tmp_path: Path):
    pipe = tmp_path / "pipe"
    shutil.copytree(tiny_vae_dir, pipe / "vae")
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "SomePipeline", "vae": ["diffusers", "X"]}))
    ae = load_autoencoder(pipe)
    assert ae.folder == pipe / "vae" and ae.source == str(pipe)
    assert ae.content_hash == hash_folder(tiny_vae_dir)


def test_load_from_hub_id_uses_the_snapshot(tiny_vae_dir: Path, tmp_path: Path, monkeypatch):
    import huggingface_hub.constants as hc

    # a hub cache holding one snapshot of "test-owner/tiny-vae": the real snapshot_download code path, offline
    repo = tmp_path / "hub" / "models--test-owner--tiny-vae"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_vae_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    ae = load_autoencoder("test-owner/tiny-vae")
    assert ae.source == "test-owner/tiny-vae" and ae.folder == repo / "snapshots" / commit
    assert ae.content_hash == hash_folder(tiny_vae_dir)

    with pytest.raises(UserError, match="could not download the autoencoder 'test-owner/missing'.*local folder"):
        load_autoencoder("test-owner/missing")


def test_clear_errors_for_bad_sources(tmp_path: Path):
    with pytest.raises(UserError, match="neither an existing folder nor a hub id"):
        load_autoencoder(str(tmp_path / "no" / "such" / "folder"))
    with pytest.raises(UserError, match="not an autoencoder folder.*accepted"):
        load_autoencoder(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        load_autoencoder(tmp_path / "f.txt")
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(UserError, match="describes a UNet2DModel, not an autoencoder"):
        load_autoencoder(unet)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    with pytest.raises(UserError, match="no vae/ yet"):
        load_autoencoder(run)
    with pytest.raises(UserError, match="no autoencoder given"):
        load_autoencoder("")


def test_recon_grid_puts_originals_above_reconstructions():
    white = torch.ones(10, 1, 4, 4)
    black = -torch.ones(10, 1, 4, 4)
    im = recon_grid(white, black, per_row=8, pad=1)
    a = torch.from_numpy(np.array(im)).float()
    # 2 rows of originals (10 images, 8 per row), then 2 rows of reconstructions
    assert im.size == (8 * 5 + 1, 4 * 5 + 1 + 1)
    assert a[1:5, 1:5].min() == 255 and a[6:10, 1:5].min() == 255  # originals: white
    assert a[12:16, 1:5].max() == 0 and a[17:21, 1:5].max() == 0  # reconstructions: black


def test_cli_bad_key_dry_run_and_stop_flag(tmp_path: Path, capsys):
    from ldm.cli import main
    from ldm.commands._common import StopFlag

    code = main(["train-vae", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "autoencoder.bogus_key=1"])
    assert code == 2
    assert "autoencoder.bogus_key" in capsys.readouterr().err

    code = main(
        ["train-vae", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--max-minutes", "2", "--dry-run"]
    )
    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["autoencoder"]["max_minutes"] == 2.0 and printed["autoencoder"]["down_factor"] == 4
    assert not (tmp_path / "r").exists()

    with StopFlag() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)  # handled: sets the flag instead of killing the process
        assert stop()


def test_train_vae_resumes_exactly_and_keeps_the_run_folder_layout(att_faces: Path, tmp_path: Path, capsys):
    """Stop after 3 steps, resume: the same next losses and the same final weights as an uninterrupted run (with the
    discriminator, flips and the EMA in play); checkpoints, status.json and the CLI's --resume as in `ldm train`."""
    from safetensors.torch import load_file

    from ldm.cli import main
    from ldm.run_folder import RunFolder

    extra = ["autoencoder.max_steps=6", "autoencoder.max_minutes=0", "autoencoder.sample_every=0"]
    extra += ["autoencoder.disc_weight=0.1", "autoencoder.disc_start=2", "data.hflip=true"]
    cfg = load_config(None, TINY + extra)
    full: list[float] = []
    train_vae(cfg, att_faces, tmp_path / "full", progress=False, on_log=lambda r: full.append(r["loss"]))

    part: list[float] = []
    polls = {"n": 0}

    def stop_after_3() -> bool:
        polls["n"] += 1
        return polls["n"] >= 3

    run = tmp_path / "part"
    result = train_vae(
        cfg, att_faces, run, progress=False, should_stop=stop_after_3, on_log=lambda r: part.append(r["loss"])
    )
    assert result["stopped_early"] and result["steps"] == 3 and part == full[:3]
    status = RunFolder(run).read_status()
    assert status["state"] == "stopped" and status["step"] == 3 and status["kind"] == "autoencoder"
    ckpt = RunFolder(run).latest_checkpoint()
    assert ckpt.name == "step-000003"
    for name in ("autoencoder/diffusion_pytorch_model.safetensors", "autoencoder_ema", "optimizer.pt", "rng.pt"):
        assert (ckpt / name).exists(), name
    for name in ("discriminator.pt", "state.json"):
        assert (ckpt / name).exists(), name
    assert json.loads((ckpt / "state.json").read_text())["data_dir"] == str(att_faces.resolve())
    with pytest.raises(UserError, match="--resume latest"):
        train_vae(cfg, att_faces, run, progress=False)

    rest: list[float] = []
    result = train_vae(cfg, None, run, progress=False, resume="latest", on_log=lambda r: rest.append(r["loss"]))
    assert result["steps"] == 6 and not result["stopped_early"]
    assert rest == full[3:]  # bit-identical: data order, flips, posterior noise, optimisers, EMA and discriminator
    a = load_file(tmp_path / "full" / "vae" / "diffusion_pytorch_model.safetensors")
    b = load_file(run / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "rec_loss" in r] == [1, 2, 3, 4, 5, 6]
    assert RunFolder(run).read_status()["state"] == "finished"
    assert [p.name for p in RunFolder(run).checkpoints()] == ["step-000003", "step-000006"]  # keep_checkpoints=2

    # the CLI: --resume without --data and --config continues on the run's own dataset and config (1 step more)
    assert main(["train-vae", "--out", str(run), "--resume", "latest", "--max-steps", "1", "--no-progress"]) == 0
    assert RunFolder(run).read_status()["step"] == 7 and "finished after 7 steps" in capsys.readouterr().out
    assert main(["train-vae", "--out", str(tmp_path / "new"), "--max-steps", "1"]) == 2
    assert "--data DIR is required" in capsys.readouterr().err


def test_colour_balance_matrix_whitens_at_half_and_is_the_identity_at_zero():
    from ldm.training.autoencoder import colour_balance_matrix, in_colour_space

    g = torch.Generator().manual_seed(0)
    # correlated channels of unequal variance, like colour photos (one bright axis, two faint colour axes)
    mix = torch.tensor([[1.0, 0.9, 0.8], [0.9, 1.0, 0.7], [0.8, 0.7, 1.0]])
    x = torch.einsum("ij,njhw->nihw", mix, torch.randn(16, 3, 8, 8, generator=g))
    assert torch.allclose(colour_balance_matrix(x, 0.0), torch.eye(3), atol=1e-5)
    m = colour_balance_matrix(x, 0.5)
    assert torch.allclose(m, m.T, atol=1e-5)  # symmetric: each colour keeps its own axis
    w = torch.linalg.eigvalsh(torch.cov(in_colour_space(x, m).transpose(0, 1).reshape(3, -1)))
    assert float(w.max() / w.min()) < 1.01  # whitened: every colour direction as strong as the strongest
    w_quarter = torch.linalg.eigvalsh(torch.cov(in_colour_space(x, colour_balance_matrix(x, 0.25)).transpose(0, 1)
                                                .reshape(3, -1)))  # fmt: skip
    w0 = torch.linalg.eigvalsh(torch.cov(x.transpose(0, 1).reshape(3, -1)))
    assert 1.01 < float(w_quarter.max() / w_quarter.min()) < float(w0.max() / w0.min())  # halfway, in log terms


def test_folding_the_colour_space_gives_an_rgb_autoencoder_computing_the_same():
    from ldm.training.autoencoder import colour_balance_matrix, fold_colour_space, in_colour_space

    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x = x * torch.tensor([1.0, 0.3, 0.1])[:, None, None]  # three colour directions of unequal strength
    m = colour_balance_matrix(x, 0.25)
    ae = build_autoencoder_kl(AutoencoderConfig(block_out_channels=(16,), norm_num_groups=8), 3, 16).eval()
    folded = fold_colour_space(ae, m)
    with torch.no_grad():
        expected = in_colour_space(ae(in_colour_space(x, m)).sample, torch.linalg.inv(m))
        assert torch.allclose(folded(x).sample, expected, atol=1e-5)
        assert not torch.equal(ae.encoder.conv_in.weight, folded.encoder.conv_in.weight)  # a copy; the model kept
    assert type(folded) is type(ae) and folded.config == ae.config


def test_train_vae_with_colour_balance_saves_the_autoencoder_it_evaluated(tmp_path: Path):
    """RGB data, colour_balance 0.25: the saved vae/ is a plain AutoencoderKL on RGB images, and its held-out PSNR
    is the one eval.json reports (the folded model is the one measured and saved); a resumed run is bit-exact."""
    from safetensors.torch import load_file

    from ldm.data.synth import make_synth_faces
    from ldm.evaluation.metrics import psnr
    from ldm.training.autoencoder import _load_images

    data = tmp_path / "faces"
    make_synth_faces(data, per_class=6, seed=0)
    rgb = [o.replace("data.channels=1", "data.channels=3") for o in TINY]
    cfg = load_config(None, rgb + ["autoencoder.colour_balance=0.25", "autoencoder.max_minutes=0"])
    result = train_vae(cfg, data, tmp_path / "run", progress=False)
    ae = load_autoencoder(tmp_path / "run", device="cpu")
    _, hold, _ = _load_images(data, 16, 3, cfg.autoencoder.seed, cfg.data.holdout_fraction)
    with torch.no_grad():
        measured = float(psnr(decode(ae, encode(ae, hold)), hold).mean())
    assert measured == pytest.approx(result["psnr"], abs=1e-3)

    polls = {"n": 0}

    def stop_after_2() -> bool:
        polls["n"] += 1
        return polls["n"] >= 2

    train_vae(cfg, data, tmp_path / "part", progress=False, should_stop=stop_after_2)
    train_vae(cfg, None, tmp_path / "part", progress=False, resume="latest")
    a = load_file(tmp_path / "run" / "vae" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "part" / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_bad_colour_balance_is_a_clear_error(tmp_path: Path, value: str):
    cfg = load_config(None, TINY + [f"autoencoder.colour_balance={value}"])
    with pytest.raises(UserError, match=r"autoencoder.colour_balance must be in \[0, 1\]"):
        train_vae(cfg, tmp_path, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="autoencoder.colour_balance.*a finite number"):
        load_config(None, TINY + ["autoencoder.colour_balance=nan"])
