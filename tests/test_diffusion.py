"""The diffusion objective: each loss is really the one named, targets, min-SNR weights, dropout, training."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ldm.config import DiffusionConfig, UNetConfig
from ldm.device import resolve_mixed_precision
from ldm.diffusion.objective import (
    EDM_P_MEAN,
    EDM_P_STD,
    diffusion_loss,
    make_train_scheduler,
    min_snr_weights,
    sample_timesteps,
    snr,
)
from ldm.errors import UserError
from ldm.models.unet import build_unet

NUM_CLASSES = 3


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tiny models gain nothing from two, and on a shared 2-core machine OpenMP's
    spin-waiting makes two threads up to 20x slower (measured: 5.3 s vs 0.26 s per tiny-model step)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class FixedOutput(torch.nn.Module):
    """Stands in for the UNet: records its inputs and returns a fixed prediction."""

    def __init__(self, pred: torch.Tensor):
        super().__init__()
        self.pred = pred
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, class_labels=None):
        self.calls.append((x, t, class_labels))
        return SimpleNamespace(sample=self.pred)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(123)
    latents = torch.randn(6, 4, 8, 8, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (6,), generator=g)
    return latents, labels


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return build_unet(UNetConfig(preset="tiny"), sample_size=8, in_channels=4, num_classes=NUM_CLASSES).eval()


def draws(seed: int, latents: torch.Tensor, T: int = 1000):
    """The timesteps and noise diffusion_loss draws from a generator seeded ``seed`` when label_dropout=0."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, T, (latents.shape[0],), generator=g)
    noise = torch.randn(latents.shape, generator=g)
    return t, noise


def by_hand_noisy(scheduler, latents, noise, t):
    ac = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    return ac.sqrt() * latents + (1 - ac).sqrt() * noise, ac


def test_scheduler_follows_config():
    s = make_train_scheduler(DiffusionConfig(beta_schedule="linear", prediction_type="v_prediction"))
    assert s.config.num_train_timesteps == 1000
    assert s.config.beta_schedule == "linear" and s.config.prediction_type == "v_prediction"
    s2 = make_train_scheduler(DiffusionConfig(num_train_timesteps=50))
    assert len(s2.alphas_cumprod) == 50
    with pytest.raises(UserError, match="squaredcos_cap_v2"):
        make_train_scheduler(DiffusionConfig(beta_schedule="cosine"))


@pytest.mark.parametrize("loss", ["mse", "l1", "huber"])
def test_each_loss_equals_its_formula(tiny_unet, batch, loss):
    latents, labels = batch
    # epsilon target (the noise), so the formulas below are the losses themselves; v targets: the next test
    cfg = DiffusionConfig(prediction_type="epsilon", loss=loss, huber_delta=0.1, snr_gamma=None, label_dropout=0.0)
    scheduler = make_train_scheduler(cfg)
    with torch.no_grad():
        got = diffusion_loss(tiny_unet, scheduler, latents, labels, cfg, NUM_CLASSES, torch.Generator().manual_seed(7))
        t, noise = draws(7, latents)
        noisy, _ = by_hand_noisy(scheduler, latents, noise, t)
        pred = tiny_unet(noisy, t, class_labels=labels).sample
    d = pred - noise
    want = {
        "mse": (d**2).mean(),
        "l1": d.abs().mean(),
        # smooth L1 with beta = delta: 0.5 d^2 / delta inside |d| < delta, |d| - delta / 2 outside.
        "huber": torch.where(d.abs() < 0.1, 0.5 * d**2 / 0.1, d.abs() - 0.05).mean(),
    }[loss]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_three_losses_differ_on_the_same_batch(tiny_unet, batch):
    latents, labels = batch
    values = {}
    for loss in ("mse", "l1", "huber"):
        cfg = DiffusionConfig(loss=loss)
        with torch.no_grad():
            values[loss] = diffusion_loss(
                tiny_unet,
                make_train_scheduler(cfg),
                latents,
                labels,
                cfg,
                NUM_CLASSES,
                torch.Generator().manual_seed(0),
            ).item()
    assert len({round(v, 6) for v in values.values()}) == 3, values


def test_v_prediction_target(batch):
    latents, labels = batch
    cfg = DiffusionConfig(prediction_type="v_prediction", snr_gamma=None, label_dropout=0.0)
    scheduler = make_train_scheduler(cfg)
    pred = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    fake = FixedOutput(pred)
    got = diffusion_loss(fake, scheduler, latents, labels, cfg, NUM_CLASSES, torch.Generator().manual_seed(3))
    t, noise = draws(3, latents)
    noisy, ac = by_hand_noisy(scheduler, latents, noise, t)
    v = ac.sqrt() * noise - (1 - ac).sqrt() * latents  # Salimans & Ho 2022, eq. in section 4
    torch.testing.assert_close(fake.calls[0][0], noisy)
    torch.testing.assert_close(fake.calls[0][1], t)
    torch.testing.assert_close(got, F.mse_loss(pred, v))
    # ... and not the epsilon loss.
    assert not torch.allclose(got, F.mse_loss(pred, noise))


def test_min_snr_weights_by_hand():
    s = torch.tensor([0.0, 0.5, 5.0, 50.0])
    eps = min_snr_weights(s, 5.0, "epsilon")
    torch.testing.assert_close(eps, torch.tensor([1.0, 1.0, 1.0, 0.1]))  # min(snr, 5) / snr, and 1 at snr = 0
    v = min_snr_weights(s, 5.0, "v_prediction")
    torch.testing.assert_close(v, torch.tensor([0.0, 0.5 / 1.5, 5 / 6, 5 / 51]))  # min(snr, 5) / (snr + 1)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weighting_in_the_loss(batch, prediction_type):
    latents, labels = batch
    cfg = DiffusionConfig(prediction_type=prediction_type, snr_gamma=5.0, label_dropout=0.0)
    scheduler = make_train_scheduler(cfg)
    pred = torch.zeros_like(latents)
    got = diffusion_loss(
        FixedOutput(pred), scheduler, latents, labels, cfg, NUM_CLASSES, torch.Generator().manual_seed(5)
    )
    t, noise = draws(5, latents)
    _, ac = by_hand_noisy(scheduler, latents, noise, t)
    target = noise if prediction_type == "epsilon" else ac.sqrt() * noise - (1 - ac).sqrt() * latents
    snr_t = (ac / (1 - ac)).flatten()
    torch.testing.assert_close(snr(scheduler, t), snr_t)
    w = torch.minimum(snr_t, torch.tensor(5.0)) / (snr_t if prediction_type == "epsilon" else snr_t + 1)
    want = (w * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(got, want)
    unweighted = DiffusionConfig(prediction_type=prediction_type, snr_gamma=None, label_dropout=0.0)
    plain = diffusion_loss(
        FixedOutput(pred), scheduler, latents, labels, unweighted, NUM_CLASSES, torch.Generator().manual_seed(5)
    )
    assert not torch.allclose(got, plain)


def test_label_dropout_uses_the_null_class(batch):
    latents, labels = batch
    scheduler = make_train_scheduler(DiffusionConfig())
    for p, expect_all_null in ((1.0, True), (0.0, False)):
        fake = FixedOutput(torch.zeros_like(latents))
        cfg = DiffusionConfig(label_dropout=p)
        diffusion_loss(fake, scheduler, latents, labels, cfg, NUM_CLASSES, torch.Generator().manual_seed(0))
        seen = fake.calls[0][2]
        if expect_all_null:
            assert (seen == NUM_CLASSES).all()
        else:
            assert torch.equal(seen, labels)
    # p = 0.5 over many labels: about half dropped, the rest untouched.
    big = torch.randint(0, NUM_CLASSES, (2000,), generator=torch.Generator().manual_seed(0))
    fake = FixedOutput(torch.zeros(2000, 1, 1, 1))
    cfg = DiffusionConfig(label_dropout=0.5)
    diffusion_loss(
        fake, scheduler, torch.zeros(2000, 1, 1, 1), big, cfg, NUM_CLASSES, torch.Generator().manual_seed(0)
    )
    seen = fake.calls[0][2]
    dropped = seen == NUM_CLASSES
    assert 0.45 < dropped.float().mean().item() < 0.55
    assert torch.equal(seen[~dropped], big[~dropped])


def test_same_seed_same_loss_other_seed_other_loss(tiny_unet, batch):
    latents, labels = batch
    cfg = DiffusionConfig()
    s = make_train_scheduler(cfg)
    with torch.no_grad():
        a = diffusion_loss(tiny_unet, s, latents, labels, cfg, NUM_CLASSES, torch.Generator().manual_seed(11))
        b = diffusion_loss(tiny_unet, s, latents, labels, cfg, NUM_CLASSES, torch.Generator().manual_seed(11))
        c = diffusion_loss(tiny_unet, s, latents, labels, cfg, NUM_CLASSES, torch.Generator().manual_seed(12))
    assert a.item() == b.item() and a.item() != c.item()
    assert a.dtype == torch.float32 and a.ndim == 0


def test_lognormal_timesteps_follow_edm_noise_levels():
    """diffusion.timestep_sampling=lognormal: the steps' noise levels sigma_t = sqrt((1 - abar) / abar) are EDM's
    log-normal (shifted to unit-variance latents); uniform is torch.randint, so existing runs reproduce bit-exactly."""
    sched = make_train_scheduler(DiffusionConfig())
    t = sample_timesteps(sched, 50_000, "lognormal", "cpu", torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and 0 <= int(t.min()) and int(t.max()) < 1000
    abar = sched.alphas_cumprod[t]
    log_sigma = 0.5 * torch.log((1 - abar) / abar)
    assert abs(float(log_sigma.mean()) - EDM_P_MEAN) < 0.03 and abs(float(log_sigma.std()) - EDM_P_STD) < 0.03
    uniform = sample_timesteps(sched, 8, "uniform", "cpu", torch.Generator().manual_seed(1))
    assert torch.equal(uniform, torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(1)))
    with pytest.raises(UserError, match="accepted: uniform, lognormal"):
        sample_timesteps(sched, 8, "beta", "cpu")


def test_resolve_mixed_precision():
    assert resolve_mixed_precision("no", "cpu") == "no"
    assert resolve_mixed_precision("bf16", "cpu") == "bf16"
    assert resolve_mixed_precision("auto", "cpu") in ("no", "bf16")
    with pytest.raises(UserError, match="fp16"):
        resolve_mixed_precision("fp16", "cpu")
    with pytest.raises(UserError, match="auto, no, bf16, fp16"):
        resolve_mixed_precision("fp8", "cpu")
    # the autoencoder's spelling of float32 is the same setting; errors name the key they are about
    assert resolve_mixed_precision("fp32", "cpu", "autoencoder.mixed_precision") == "no"
    with pytest.raises(UserError, match="autoencoder.mixed_precision"):
        resolve_mixed_precision("fp8", "cpu", "autoencoder.mixed_precision")
    assert resolve_mixed_precision("auto", "mps") == "no"
