"""PSNR and SSIM: known answers and an independent brute-force SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ldm.evaluation.metrics import mean_psnr, psnr, reconstruction_metrics, ssim


def test_identical_images_psnr_inf_ssim_one():
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-6)


def test_known_mse_gives_known_psnr():
    a = torch.zeros(2, 3, 16, 16)  # 0.5 on [0, 1]
    b = a.clone()
    b[0] += 0.2  # 0.1 on [0, 1]: MSE 0.01 -> 20 dB
    b[1] -= 0.02  # 0.01 on [0, 1]: MSE 1e-4 -> 40 dB
    p = psnr(b, a)
    assert p.shape == (2,)
    assert p[0].item() == pytest.approx(20.0, abs=1e-4)
    assert p[1].item() == pytest.approx(40.0, abs=1e-4)
    assert mean_psnr(b, a) == pytest.approx(30.0, abs=1e-4)


def test_values_are_clamped_to_the_image_range():
    a = torch.full((1, 1, 16, 16), -1.0)
    assert psnr(torch.full_like(a, -5.0), a).isinf().all()  # out of range clamps to -1


def test_constant_images_ssim_known_answer():
    # no variance: SSIM reduces to the luminance term (2 ma mb + c1) / (ma^2 + mb^2 + c1)
    a = torch.full((1, 3, 16, 16), -0.5)  # 0.25
    b = torch.full((1, 3, 16, 16), 0.5)  # 0.75
    c1 = 0.01**2
    expected = (2 * 0.25 * 0.75 + c1) / (0.25**2 + 0.75**2 + c1)
    assert ssim(a, b).item() == pytest.approx(expected, rel=1e-5)


def _brute_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), every valid position, by explicit loops."""
    r = np.arange(11) - 5
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    g /= g.sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for c in range(a.shape[0]):
        for i in range(a.shape[1] - 10):
            for j in range(a.shape[2] - 10):
                pa, pb = a[c, i : i + 11, j : j + 11], b[c, i : i + 11, j : j + 11]
                ma, mb = (g * pa).sum(), (g * pb).sum()
                va, vb = (g * (pa - ma) ** 2).sum(), (g * (pb - mb) ** 2).sum()
                cov = (g * (pa - ma) * (pb - mb)).sum()
                vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 14, 13, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    got = ssim(a, b)
    for k in range(2):
        ref = _brute_ssim(((a[k] + 1) / 2).double().numpy(), ((b[k] + 1) / 2).double().numpy())
        assert got[k].item() == pytest.approx(ref, abs=1e-5)
    assert 0 < got.min() < got.max() < 1


def test_ssim_and_psnr_fall_with_noise():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 32, 32, generator=g) * 2 - 1
    noise = torch.randn(x.shape, generator=g)
    small, big = (x + 0.05 * noise), (x + 0.5 * noise)
    assert psnr(small, x) > psnr(big, x)
    assert ssim(small, x) > ssim(big, x)


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 15))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_single_image_and_summary():
    x = torch.zeros(3, 16, 16)
    y = x + 0.2
    assert psnr(y, x).shape == (1,)
    m = reconstruction_metrics(y[None], x[None])
    assert m["num_images"] == 1 and m["psnr"] == pytest.approx(20.0, abs=1e-4) and math.isfinite(m["ssim"])
