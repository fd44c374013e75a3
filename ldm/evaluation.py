"""Quality numbers for a trained model: FID, KID, class accuracy, reconstruction and a memorisation check.

    ldm eval --run runs/faces --real data/att-faces --num-samples 200

writes ``<run>/eval.json``, ``<run>/eval.md`` and ``<run>/memorisation.png``. The metric functions work on feature
arrays ``(N, D)`` (numpy or torch), so they are tested on sets with known answers; :func:`evaluate_run` wires them to
the Inception extractor (:mod:`ldm.inception`), the class classifier (:mod:`ldm.classifier`), the sampler and the
autoencoder. :class:`QuickEvaluator` is the cheap version the trainer calls every ``eval_every`` steps.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

# a class gets its own FID/KID when both the real and the generated set hold at least this many images: below it the
# covariance (FID) is mostly noise and the KID subsets are tiny
MIN_PER_CLASS = 10


def _as_f64(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a feature array (N, D), got shape {a.shape}")
    return a


# ----------------------------------------------------------------------------------------------------------------------
# FID


def _trace_sqrt_product(f1: np.ndarray, f2: np.ndarray) -> float:
    """Tr((S1 S2)^1/2) for S1 = f1^T f1 and S2 = f2^T f2: the nuclear norm of f1 f2^T.

    The eigenvalues of S1 S2 are the squared singular values of f1 f2^T (both products share their non-zero
    spectrum), so this is exact, never complex, and costs an SVD of the small side.
    """
    return float(np.linalg.svd(f1 @ f2.T, compute_uv=False).sum())


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_from_stats(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, eq. 6; Dowson & Landau 1982).

    ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)``, with the trace of the square root computed through symmetric
    square roots (eigh), which stays real and stable where ``scipy.linalg.sqrtm`` of the non-symmetric product can
    return complex values. mu: (D,), sigma: (D, D).
    """
    mu1, mu2 = np.asarray(mu1, np.float64).ravel(), np.asarray(mu2, np.float64).ravel()
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != (mu1.size, mu1.size) or s2.shape != s1.shape:
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    tr = _trace_sqrt_product(_psd_sqrt(s1), _psd_sqrt(s2))
    return float(max(0.0, ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr))


def frechet_distance(feats1: Any, feats2: Any) -> float:
    """FID-style Fréchet distance between two feature sets ``(N, D)`` and ``(M, D)`` (N, M >= 2).

    Gaussian fits with the unbiased covariance (``np.cov``), as in the reference implementation. When a set has
    fewer samples than dimensions the centred features themselves are the covariance factors, which avoids D x D
    matrices altogether (exact, and much faster for the small sets of per-class FID).
    """
    a, b = _as_f64(feats1), _as_f64(feats2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    d = a.shape[1]
    mu1, mu2 = a.mean(0), b.mean(0)
    f1 = (a - mu1) / math.sqrt(len(a) - 1)  # cov(a) = f1^T f1
    f2 = (b - mu2) / math.sqrt(len(b) - 1)
    if len(a) > d:
        f1 = _psd_sqrt(f1.T @ f1)
    if len(b) > d:
        f2 = _psd_sqrt(f2.T @ f2)
    tr = _trace_sqrt_product(f1, f2)
    return float(max(0.0, ((mu1 - mu2) ** 2).sum() + (f1**2).sum() + (f2**2).sum() - 2 * tr))


# ----------------------------------------------------------------------------------------------------------------------
# KID


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 estimate between samples x (m, D) and y (n, D) with ``k(a, b) = (a.b / D + coef0)^degree``.

    Bińkowski et al. 2018 (arXiv:1801.01401), eq. 2 / the KID definition; diagonal terms are excluded.
    """
    d = x.shape[1]
    kxx = (x @ x.T / d + coef0) ** degree
    kyy = (y @ y.T / d + coef0) ** degree
    kxy = (x @ y.T / d + coef0) ** degree
    m, n = len(x), len(y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kernel_inception_distance(
    real: Any, fake: Any, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): mean and standard deviation of the unbiased polynomial MMD^2 over subsets.

    ``real`` (N, D), ``fake`` (M, D); each of ``num_subsets`` draws ``min(subset_size, N, M)`` samples of each set
    without replacement (as torch-fidelity / torchmetrics do). Unbiased: identical distributions give about 0 (and
    can give small negative values). Reported in raw units (multiply by 1000 for the usual "KID x 10^3").
    """
    x, y = _as_f64(real), _as_f64(fake)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    k = min(subset_size, len(x), len(y))
    if k < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    vals = [
        polynomial_mmd2_unbiased(x[rng.choice(len(x), k, replace=False)], y[rng.choice(len(y), k, replace=False)])
        for _ in range(num_subsets)
    ]
    return float(np.mean(vals)), float(np.std(vals))


# ----------------------------------------------------------------------------------------------------------------------
# per-class metrics, class accuracy, memorisation


def per_class_fid_kid(
    real_feats: Any,
    real_labels: Sequence[int],
    fake_feats: Any,
    fake_labels: Sequence[int],
    classes: Sequence[str],
    min_samples: int = MIN_PER_CLASS,
    kid_subsets: int = 100,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """FID and KID per class, for classes with at least ``min_samples`` real and generated images.

    Returns ``{class name: {"n_real", "n_fake", "fid", "kid", "kid_std"}}``; classes below the threshold get the
    counts and ``None`` metrics (with a ``"skipped"`` reason) so the report shows why.
    """
    a, b = _as_f64(real_feats), _as_f64(fake_feats)
    rl, fl = np.asarray(real_labels), np.asarray(fake_labels)
    out: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(classes):
        ra, fb = a[rl == c], b[fl == c]
        row: dict[str, Any] = {"n_real": int(len(ra)), "n_fake": int(len(fb))}
        if len(ra) < min_samples or len(fb) < min_samples:
            row.update(fid=None, kid=None, kid_std=None, skipped=f"fewer than {min_samples} real or generated images")
        else:
            kid, kid_std = kernel_inception_distance(ra, fb, num_subsets=kid_subsets, seed=seed + c)
            row.update(fid=frechet_distance(ra, fb), kid=kid, kid_std=kid_std)
        out[name] = row
    return out


def class_accuracy(predicted: Sequence[int], requested: Sequence[int], classes: Sequence[str]) -> dict[str, Any]:
    """Share of generated images the classifier recognises as the class they were asked for.

    Returns ``{"overall": float, "per_class": {name: float | None}, "counts": {name: n}}`` (None: no image asked).
    """
    p, r = np.asarray(predicted), np.asarray(requested)
    if p.shape != r.shape:
        raise ValueError(f"predicted {p.shape} and requested {r.shape} labels differ in length")
    per = {}
    counts = {}
    for c, name in enumerate(classes):
        m = r == c
        counts[name] = int(m.sum())
        per[name] = float((p[m] == c).mean()) if m.any() else None
    return {"overall": float((p == r).mean()) if len(r) else float("nan"), "per_class": per, "counts": counts}


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _pairwise_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(d2, 0, None))


def memorisation(fake_feats: Any, train_feats: Any) -> dict[str, Any]:
    """Nearest training image of each generated image in (L2-normalised) feature space.

    The reference scale is the median over training images of the distance to their nearest *other* training image
    (real-to-real, leave-one-out). A generated image closer to a training image than that is "closer than real images
    are to each other": a copy candidate. Returns ``{"nn_index": [M], "nn_distance": [M], "threshold": float,
    "share_below_threshold": float, "median_ratio": float}`` (ratio = nn distance / threshold).
    """
    f = _l2_normalise(_as_f64(fake_feats))
    t = _l2_normalise(_as_f64(train_feats))
    if len(t) < 2:
        raise ValueError("memorisation needs at least 2 training images")
    d_ft = _pairwise_dist(f, t)
    nn_idx = d_ft.argmin(1)
    nn_d = d_ft[np.arange(len(f)), nn_idx]
    d_tt = _pairwise_dist(t, t)
    np.fill_diagonal(d_tt, np.inf)
    threshold = float(np.median(d_tt.min(1)))
    return {
        "nn_index": nn_idx.tolist(),
        "nn_distance": nn_d.tolist(),
        "threshold": threshold,
        "share_below_threshold": float((nn_d < threshold).mean()) if len(f) else float("nan"),
        "median_ratio": float(np.median(nn_d) / threshold) if threshold > 0 and len(f) else float("nan"),
    }
