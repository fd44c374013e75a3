"""The pipeline's sampling loop: determinism, batch independence, guidance, negative class, snapshots, schedulers,
class names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ldm.choices import SCHEDULERS
from ldm.diffusion.pipeline import (
    ClassConditionalLatentDiffusionPipeline,
    SamplingCancelled,
    build_pipeline,
    map_snapshot_timesteps,
    resolve_class,
)
from ldm.diffusion.schedulers import make_scheduler
from ldm.errors import UserError
from ldm.figures import snapshot_figure

CLASSES = ["frowning", "sleepy", "smiling"]
STEPS = 3


@pytest.fixture(scope="module")
def parts(tiny_vae_dir: Path):
    """(unet, vae, train scheduler config): a seeded tiny UNet on 8x8x4 latents, 3 classes + the null class."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        norm_num_groups=8,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=len(CLASSES) + 1,
    ).eval()
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    # Tiny models on a shared 2-core machine: one intra-op thread is ~20x faster than two fighting for a core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield unet, vae, train.config
    torch.set_num_threads(threads)


def run(parts, class_ids, scheduler="dpm++", **kw):
    """The tiny models as a pipeline (null class 3, scaling factor 0.5), called with sampler ``scheduler``."""
    unet, vae, cfg = parts
    kw.setdefault("num_inference_steps", STEPS)
    return build_pipeline(unet, vae, cfg, CLASSES, 0.5, scheduler=scheduler)(class_ids, **kw)


class UNetSpy:
    """Records the class labels of every UNet call (forward pre-hook)."""

    def __init__(self, unet):
        self.calls: list[list[int]] = []
        self.handle = unet.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls.append(kwargs["class_labels"].tolist())

    def close(self):
        self.handle.remove()


def test_same_seed_same_images_and_images_in_range(parts):
    a = run(parts, [0, 2], seeds=[7, 8])
    b = run(parts, [0, 2], seeds=[7, 8])
    assert torch.equal(a.pixels, b.pixels) and torch.equal(a.latents, b.latents)
    assert a.pixels.shape == (2, 3, 16, 16) and a.latents.shape == (2, 4, 8, 8)
    assert a.pixels.min() >= -1 and a.pixels.max() <= 1
    assert [im.size for im in a.images] == [(16, 16)] * 2 and a.images[0].mode == "RGB"
    c = run(parts, [0, 2], seeds=[7, 9])
    assert not torch.allclose(a.latents[1], c.latents[1])  # another seed, another image


@pytest.mark.parametrize("name", ["dpm++", "euler_a"])  # deterministic, and stochastic (per-step noise)
def test_image_does_not_depend_on_its_batch_mates(parts, name):
    batch = run(parts, [0, 1, 2], name, seeds=[3, 4, 5])
    alone = run(parts, [1], name, seeds=[4])
    torch.testing.assert_close(batch.latents[1], alone.latents[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.pixels[1], alone.pixels[0], atol=1e-5, rtol=1e-5)


def test_guidance_batches_both_passes_and_scale_one_is_a_single_pass(parts):
    spy = UNetSpy(parts[0])
    try:
        guided = run(parts, [0, 1], seeds=[1, 2], guidance_scale=3.0)
        n_guided = list(spy.calls)
        spy.calls.clear()
        plain = run(parts, [0, 1], seeds=[1, 2], guidance_scale=1.0)
        n_plain = list(spy.calls)
    finally:
        spy.close()
    # one UNet call per step holding the unconditional (null class 3) and conditional halves
    assert n_guided == [[3, 3, 0, 1]] * STEPS
    assert n_plain == [[0, 1]] * STEPS
    assert (guided.latents - plain.latents).abs().max() > 1e-3


def test_negative_class_replaces_the_null_class(parts):
    spy = UNetSpy(parts[0])
    try:
        neg = run(parts, [0], seeds=[1], negative_class_labels=[2])
    finally:
        spy.close()
    assert spy.calls == [[2, 0]] * STEPS
    base = run(parts, [0], seeds=[1])
    assert (neg.latents - base.latents).abs().max() > 1e-3


def test_callback_and_cancellation(parts):
    seen = []
    run(parts, [0], callback=lambda i, t, x: seen.append((i, t, tuple(x.shape))))
    assert [s[0] for s in seen] == list(range(STEPS)) and seen[0][2] == (1, 4, 8, 8)
    assert seen[0][1] > seen[-1][1]  # timesteps go down
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(SamplingCancelled):
        run(parts, [0], should_stop=stop)
    assert len(calls) == 3


def test_snapshots_decoded_in_one_batch_and_figure(parts):
    decodes = []
    vae = parts[1]
    orig = vae.decode
    vae.decode = lambda z, *a, **k: (decodes.append(z.shape[0]), orig(z, *a, **k))[1]
    try:
        res = run(parts, [0, 1], "ddim", seeds=[0, 1], num_inference_steps=6, snapshot_timesteps=[999, 500, 20, 0])
    finally:
        del vae.decode
    snaps = res.snapshots
    # 6 "leading" steps: 830, 664, 498, 332, 166, 0 -> 999 maps to 830, 500 to 498, 20 and 0 both to 0
    assert snaps.timesteps == [830, 498, 0] and snaps.requested == [[999], [500], [20, 0]]
    assert snaps.noisy.shape == snaps.pred_x0.shape == (3, 2, 3, 16, 16)
    assert decodes == [2, 2 * 3 * 2]  # the final images, then every snapshot of both images in one batch
    # the last snapshot's x0 is (nearly) the final image: DDIM's last step lands on its x0 estimate
    torch.testing.assert_close(snaps.pred_x0[-1], res.pixels, atol=1e-4, rtol=1e-4)
    one = snapshot_figure(snaps, 0, dpi=50)
    two = snapshot_figure(snaps, [0, 1], labels=["frowning", "sleepy"], dpi=50)
    assert one.mode == "RGB" and two.height > one.height * 1.5
    res6 = run(parts, [0], "ddim", num_inference_steps=6, snapshot_timesteps=[830, 664, 498, 332, 166, 0])
    wider = snapshot_figure(res6.snapshots, dpi=50)
    assert len(res6.snapshots.timesteps) == 6 and wider.width > one.width * 1.6  # 6 columns against 3


def test_snapshot_mapping_picks_nearest_step_first_occurrence():
    assert map_snapshot_timesteps([999, 0, 480], [900, 700, 500, 500, 300, 100]) == {0: [999], 2: [480], 5: [0]}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_runs(parts, name):
    res = run(parts, [0, 1], scheduler=name, seeds=[0, 1], num_inference_steps=2, snapshot_timesteps=[999, 0])
    assert torch.isfinite(res.latents).all() and res.pixels.shape == (2, 3, 16, 16)
    assert res.snapshots is not None and torch.isfinite(res.snapshots.pred_x0).all()


def test_unknown_scheduler_lists_accepted_names(parts):
    with pytest.raises(UserError, match=r"unknown scheduler 'dpm3'.*dpm\+\+.*ddim.*euler_a"):
        make_scheduler("dpm3", parts[2])


def test_resolve_class_names():
    assert resolve_class("  Smiling ", CLASSES) == 2
    assert resolve_class("SLEEPY", CLASSES) == 1
    assert resolve_class(0, CLASSES) == 0
    assert resolve_class("multi  word", ["multi word"]) == 0
    with pytest.raises(UserError, match=r"unknown class 'smilng'; closest: smiling"):
        resolve_class("smilng", CLASSES)
    with pytest.raises(UserError, match=r"empty class name; known classes: frowning, sleepy, smiling"):
        resolve_class("   ", CLASSES)
    with pytest.raises(UserError, match="out of range"):
        resolve_class(3, CLASSES)
    with pytest.raises(UserError, match="unknown class '1'; closest: s1"):
        resolve_class("1", ["s1", "s10", "s2"])  # a string is a name, never a label id


def test_bad_arguments_are_user_errors(parts):
    with pytest.raises(UserError, match="class id 9"):
        run(parts, [9])
    with pytest.raises(UserError, match="seeds"):
        run(parts, [0, 1], seeds=[1])
    with pytest.raises(UserError, match="negative_class_labels"):
        run(parts, [0, 1, 2], negative_class_labels=[1, 2])


def test_cli_unknown_and_empty_class_exit_2(parts, tmp_path, capsys):
    from ldm.cli import main

    unet, vae, cfg = parts
    build_pipeline(unet, vae, cfg, CLASSES, 0.5).save_pretrained(tmp_path / "run" / "pipeline")
    rc = main(["sample", "--run", str(tmp_path / "run"), "--class", "smilling", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown class 'smilling'" in err and "closest: smiling" in err
    rc = main(["sample", "--run", str(tmp_path / "run"), "--class", "", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "empty class name" in err and "frowning, sleepy, smiling" in err
    rc = main(["sample", "--run", str(tmp_path / "nowhere"), "--class", "smiling", "--out", str(tmp_path / "o")])
    assert rc == 2 and "model folder not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


class GaussianOracle(torch.nn.Module):
    """The exact epsilon-prediction for data x0 ~ N(mu_c, s^2 I) under the training schedule (no network):
    E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu_c) / (a s^2 + 1 - a), a = alpha_bar(t); plus optional error."""

    def __init__(self, alphas_cumprod, mus, s, err=0.0):
        super().__init__()
        import types

        self.ac = alphas_cumprod.double()
        self.mus, self.s, self.err = torch.tensor(mus, dtype=torch.float64), s, err
        self.config = types.SimpleNamespace(num_class_embeds=len(mus), in_channels=4, sample_size=8)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the sampler a device and dtype

    def forward(self, x, t, class_labels):
        import types

        tf = float(t)
        lo = min(int(tf), len(self.ac) - 1)
        a = self.ac[lo] * (1 - (tf - lo)) + self.ac[min(lo + 1, len(self.ac) - 1)] * (tf - lo)
        mu = self.mus[class_labels].view(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * (x.double() - a.sqrt() * mu) / (a * self.s**2 + 1 - a)
        if self.err:
            eps = eps + self.err * torch.randn(eps.shape, generator=torch.Generator().manual_seed(int(tf)))
        return types.SimpleNamespace(sample=eps.float())


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_samples_the_right_distribution(parts, name):
    """With the exact denoiser of a Gaussian per class, 25 steps land on the class mean and spread."""
    from diffusers import DDPMScheduler

    train = DDPMScheduler.from_config(parts[2])
    oracle = GaussianOracle(train.alphas_cumprod, [1.0, -1.0, 0.0], 0.5)
    pipe = ClassConditionalLatentDiffusionPipeline(oracle, None, make_scheduler(name, parts[2]), scaling_factor=1.0)
    res = pipe(
        [0] * 4 + [1] * 4, num_inference_steps=25, guidance_scale=1.0, seeds=list(range(8)), output_type="latent"
    )
    a, b = res.latents[:4], res.latents[4:]
    assert abs(a.mean() - 1) < 0.05 and abs(b.mean() + 1) < 0.05, (a.mean(), b.mean())
    assert abs(a.std() - 0.5) < 0.06 and abs(b.std() - 0.5) < 0.06, (a.std(), b.std())


def test_sampling_is_robust_to_small_eps_errors_at_the_start(parts):
    """An eps error of 0.01 must not blow up: the first step avoids t=999, where x0 = (x - ...) / sqrt(2e-9)."""
    from diffusers import DDPMScheduler

    train = DDPMScheduler.from_config(parts[2])
    oracle = GaussianOracle(train.alphas_cumprod, [1.0, -1.0, 0.0], 0.5, err=0.01)
    pipe = ClassConditionalLatentDiffusionPipeline(oracle, None, make_scheduler("dpm++", parts[2]), scaling_factor=1.0)
    res = pipe([0] * 4, num_inference_steps=25, guidance_scale=1.0, seeds=list(range(4)), output_type="latent",
               snapshot_timesteps=[999, 500, 0])  # fmt: skip
    assert abs(res.latents.mean() - 1) < 0.05 and abs(res.latents.std() - 0.5) < 0.06
    # predicted x0 at the first step is the posterior mean, close to the class mean; at the last, the sample itself
    x0 = res.snapshots.pred_x0
    assert abs(x0[0].mean() - 1) < 0.1 and x0[0].std() < 0.2
    torch.testing.assert_close(x0[-1], res.latents[:, :3].clamp(-1, 1), atol=0.05, rtol=0)
