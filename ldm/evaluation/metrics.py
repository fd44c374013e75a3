"""Reconstruction metrics: PSNR and SSIM on images in [-1, 1] (computed on [0, 1], data range 1).

    from ldm.evaluation.metrics import psnr, ssim, reconstruction_metrics
    psnr(recon, images)                    # (B,) dB per image
    reconstruction_metrics(recon, images)  # {"psnr": mean dB, "ssim": mean SSIM, "num_images": B}

SSIM follows Wang et al. 2004 ("Image quality assessment: from error visibility to structural similarity") with the
defaults of scikit-image (``gaussian_weights=True``) and torchmetrics: an 11x11 Gaussian window with sigma 1.5,
K1 = 0.01, K2 = 0.03, computed per channel, and averaged over the positions where the window fits in the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11  # Gaussian window side in pixels
SSIM_SIGMA = 1.5  # Gaussian window standard deviation in pixels
SSIM_K1, SSIM_K2 = 0.01, 0.03  # stabilising constants (times the data range, squared)


def _check(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim == 3:  # a single image (C, H, W)
        a, b = a[None], b[None]
    if a.ndim != 4:
        raise ValueError(f"expected images (B, C, H, W) or (C, H, W), got shape {tuple(a.shape)}")
    # [-1, 1] -> [0, 1]; float64 so that near-identical images give exact answers
    return (a.detach().double().clamp(-1, 1) + 1) / 2, (b.detach().double().clamp(-1, 1) + 1) / 2


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB.

    ``a``, ``b``: images ``(B, C, H, W)`` (or one ``(C, H, W)``) in [-1, 1]; values are clamped to [-1, 1] and mapped
    to [0, 1], so PSNR = 10 log10(1 / MSE). Returns float32 ``(B,)``; identical images give ``inf``.
    """
    a, b = _check(a, b)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse)).float()  # mse == 0 -> inf


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (mean over channels and window positions), in [-1, 1] (1 = identical).

    ``a``, ``b``: images ``(B, C, H, W)`` (or one ``(C, H, W)``) in [-1, 1], at least 11x11 pixels; computed on
    [0, 1]. Returns float32 ``(B,)``.
    """
    a, b = _check(a, b)
    _, c, h, w = a.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    win = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, a.dtype, a.device).expand(c, 1, SSIM_WINDOW, SSIM_WINDOW)

    def filt(x: torch.Tensor) -> torch.Tensor:
        # 'valid' positions only: the same values skimage and torchmetrics average after cropping their padding
        return F.conv2d(x, win, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).float()


def mean_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the per-image PSNR (dB) of images in [-1, 1]."""
    return float(psnr(a, b).mean())


def mean_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the per-image SSIM of images in [-1, 1]."""
    return float(ssim(a, b).mean())


def reconstruction_metrics(recon: torch.Tensor, images: torch.Tensor) -> dict[str, float]:
    """``{"psnr": mean dB, "ssim": mean SSIM, "num_images": B}`` of reconstructions against originals in [-1, 1]."""
    return {"psnr": mean_psnr(recon, images), "ssim": mean_ssim(recon, images), "num_images": int(images.shape[0])}
