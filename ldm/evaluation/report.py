"""Quality numbers for a trained model: FID, KID, class accuracy, reconstruction and a memorisation check.

    ldm eval --run runs/faces --real data/att-faces --num-samples 200

writes ``<run>/eval.json``, ``<run>/eval.md`` and ``<run>/memorisation.png``, and refreshes the numbers of the model
card (``README.md``) of the pipeline it evaluated (:mod:`ldm.model_card`). The metric functions work on feature
arrays ``(N, D)`` (numpy or torch), so they are tested on sets with known answers; :func:`evaluate_run` wires them to
the Inception extractor (:mod:`ldm.evaluation.inception`), the class classifier (:mod:`ldm.evaluation.classifier`),
the pipeline and the autoencoder. :class:`QuickEvaluator` is the cheap version the trainer calls every
``eval_every`` steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ldm.errors import UserError
from ldm.run_folder import RunFolder, portable_paths

if TYPE_CHECKING:
    import torch

    from ldm.data.folders import FolderScan
    from ldm.evaluation.inception import InceptionFeatureExtractor

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


# ---------------------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------------------
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
    without replacement (as torch-fidelity / torchmetrics do); when that is a whole set, the standard deviation is
    taken over subsets of half the size (see below). Unbiased: identical distributions give about 0 (and
    can give small negative values). Reported in raw units (multiply by 1000 for the usual "KID x 10^3").
    """
    x, y = _as_f64(real), _as_f64(fake)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    k = min(subset_size, len(x), len(y))
    if k < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)

    def subsets(size: int) -> list[float]:
        return [
            polynomial_mmd2_unbiased(
                x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)]
            )
            for _ in range(num_subsets)
        ]

    vals = subsets(k)
    # When a subset is a whole set, the subsets hardly differ and their spread says nothing about the estimate's
    # uncertainty (200 against 200 images: every subset is the same, std 0). Then the std comes from subsets of half
    # the size, whose spread is larger than the full estimate's: a cautious error bar.
    spread = vals if k < min(len(x), len(y)) or k < 4 else subsets(k // 2)
    return float(np.mean(vals)), float(np.std(spread))


# ---------------------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------------------
# real images and their features


@dataclass
class RealSet:
    """The real images of a dataset at the model's size: ``images`` (N, C, S, S) in [-1, 1], ``labels`` (N,) int64
    (indices into ``scan.classes``), their Inception ``features`` (N, 2048) (or None before extraction)."""

    scan: FolderScan
    images: torch.Tensor
    labels: torch.Tensor
    features: torch.Tensor | None = None


def load_real_set(
    data: str | Path | FolderScan,
    image_size: int,
    channels: int,
    extractor: InceptionFeatureExtractor | None = None,
    cache_dir: str | Path | None = None,
    log: Callable[[str], Any] | None = None,
) -> RealSet:
    """Load every readable image of a class-folder dataset; with ``extractor``, also their Inception features,
    cached under ``<cache_dir>/inception/<fingerprint>.pt`` (content fingerprint of the files + preprocessing)."""
    import torch

    from ldm.data.folders import scan_image_folder
    from ldm.evaluation.classifier import dataset_fingerprint, default_cache_dir, load_images
    from ldm.utils import atomic_write_bytes

    log = log or (lambda m: None)
    scan = data if not isinstance(data, (str, Path)) else scan_image_folder(data)
    images, labels = load_images(scan, image_size, channels)
    real = RealSet(scan, images, labels)
    if extractor is not None:
        desc = extractor.describe()
        recipe = {"inception": {k: desc[k] for k in ("extractor", "input_size", "resize")}}
        fp = dataset_fingerprint(scan, image_size, channels, recipe)
        path = Path(cache_dir or default_cache_dir()) / "inception" / f"{fp[:24]}.pt"
        if path.is_file():
            real.features = torch.load(path, weights_only=True)
            log(f"real features: cached {path}")
        else:
            t0 = time.time()
            log(f"real features: {len(images)} images through Inception (about 0.5 s each on a CPU)")
            real.features = extractor(images)
            import io

            buf = io.BytesIO()
            torch.save(real.features, buf)
            atomic_write_bytes(path, buf.getvalue())
            log(f"real features: {time.time() - t0:.0f} s, cached in {path}")
    return real


def _class_map(model_classes: Sequence[str], data_classes: Sequence[str], data_dir: Any) -> list[int]:
    """For each model class id, the label of the same class name in the real data (UserError when they differ)."""
    missing = [c for c in model_classes if c not in data_classes]
    if missing:
        raise UserError(
            f"the model's classes {missing[:10]} are not folders of the real data {data_dir} "
            f"(its classes: {list(data_classes)[:20]}); give --real the dataset the model was trained on"
        )
    return [list(data_classes).index(c) for c in model_classes]


# ---------------------------------------------------------------------------------------------------------------------
# generation


def generate_images(
    pipe: Any,
    class_ids: Sequence[int],
    *,
    scheduler: str = "dpm++",
    num_inference_steps: int = 25,
    guidance_scale: float = 3.0,
    seed: int = 0,
    batch_size: int = 16,
    log: Callable[[str], Any] | None = None,
) -> torch.Tensor:
    """Generate one image per class id with ``pipe`` (a class-conditional pipeline, :mod:`ldm.diffusion.pipeline`),
    ``batch_size`` at a time; image i uses seed ``seed + i``. The UNet runs in eval mode (its flag is restored).

    Returns float images (N, C, H, W) in [-1, 1] on CPU.
    """
    import torch

    log = log or (lambda m: None)
    out = []
    t0 = time.time()
    was_training = pipe.unet.training
    pipe.unet.eval()
    try:
        for i in range(0, len(class_ids), batch_size):
            ids = [int(c) for c in class_ids[i : i + batch_size]]
            res = pipe(
                ids,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                seeds=list(range(seed + i, seed + i + len(ids))),
                scheduler=scheduler,
            )
            out.append(res.pixels)
            log(f"generated {min(i + batch_size, len(class_ids))}/{len(class_ids)} ({time.time() - t0:.0f} s)")
    finally:
        pipe.unet.train(was_training)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------------------------
# figures and reports


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def eval_markdown(result: dict[str, Any]) -> str:
    """A readable summary of an ``eval.json`` dict."""
    s = result["settings"]
    lines = [
        f"# Evaluation of {result['model']}",
        "",
        f"{s['num_samples']} generated images ({s['scheduler']}, {s['num_inference_steps']} steps, guidance "
        f"{s['guidance_scale']}, seeds {s['seed']}..{s['seed'] + s['num_samples'] - 1}) against "
        f"{result['real']['num_images']} real images of {result['real']['data_dir']}.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| FID | {_fmt(result['fid'])} |",
        f"| KID | {_fmt(result['kid'])} ± {_fmt(result['kid_std'])} |",
        f"| class accuracy (generated) | {_fmt(result['class_accuracy']['overall'])} |",
        f"| classifier held-out accuracy (real) | {_fmt(result['classifier']['holdout_accuracy'])} "
        f"(chance {_fmt(result['classifier']['chance'])}) |",
    ]
    rec = result.get("reconstruction") or {}
    if rec.get("psnr") is not None:
        lines.append(
            f"| autoencoder PSNR / SSIM ({rec['num_images']} held-out) | {rec['psnr']:.2f} dB / {rec['ssim']:.4f} |"
        )
    else:
        lines.append(f"| autoencoder reconstruction | {rec.get('skipped', 'n/a')} |")
    mem = result["memorisation"]
    lines += [
        f"| memorisation: share closer than real-to-real median | {_fmt(mem['share_below_threshold'])} |",
        f"| memorisation: median nearest distance / real median | {_fmt(mem['median_ratio'])} |",
        "",
        f"Features: {result['features']['extractor']}; resize: {result['features']['resize']}. "
        f"KID: {s['kid_subsets']} subsets of up to {s['kid_subset_size']}, polynomial kernel (Bińkowski et al. 2018), "
        "raw units.",
        "",
        f"## Per class (FID/KID where both sets have at least {s['min_per_class']} images)",
        "",
        "| class | n real | n generated | FID | KID | class accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["per_class"].items():
        acc = result["class_accuracy"]["per_class"].get(name)
        kid = f"{_fmt(row['kid'])} ± {_fmt(row['kid_std'])}" if row["kid"] is not None else "n/a"
        lines.append(f"| {name} | {row['n_real']} | {row['n_fake']} | {_fmt(row['fid'])} | {kid} | {_fmt(acc)} |")
    lines += [
        "",
        "## Memorisation",
        "",
        "Each generated image's nearest training image in L2-normalised Inception feature space, compared with the "
        f"median nearest-neighbour distance between real images ({_fmt(mem['threshold'])}). "
        f"Closest pairs: `{mem['figure']}`.",
        "",
        "| generated | class | nearest training image | distance / median |",
        "|---|---|---|---|",
    ]
    for p in mem["closest_pairs"]:
        lines.append(f"| #{p['generated_index']} | {p['class']} | {p['training_image']} | {p['ratio']:.3f} |")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# reconstruction


def heldout_reconstruction(
    model_folder: str | Path, real: RealSet, fraction: float, seed: int, device: str = "cpu", batch_size: int = 16
) -> dict[str, Any]:
    """:func:`ldm.evaluation.metrics.reconstruction_metrics` of the pipeline's autoencoder on the held-out real
    images (``holdout_split(fraction, seed)``, the split ``ldm train-vae`` uses with the run's
    ``data.holdout_fraction`` and ``autoencoder.seed``), plus the split and the autoencoder's source."""
    try:
        from ldm.models.autoencoder import decode, encode, load_autoencoder
    except ImportError as e:  # the autoencoder module is another stage; eval still reports the rest
        return {"psnr": None, "ssim": None, "skipped": f"autoencoder modules unavailable ({e})"}
    from ldm.data.folders import holdout_split
    from ldm.evaluation.metrics import reconstruction_metrics

    _, hold = holdout_split(real.scan.samples, fraction, seed)
    if not hold:
        hold = list(range(len(real.images)))
    ae = load_autoencoder(str(model_folder), device=device)
    images = real.images[hold]
    if images.shape[1] != ae.in_channels:
        from ldm.evaluation.classifier import match_channels

        images = match_channels(images, ae.in_channels)
    images = images.cpu()
    recon = decode(ae, encode(ae, images, batch_size), batch_size)  # batches go to ``device`` and back
    return {
        **reconstruction_metrics(recon, images),
        "holdout": {"fraction": fraction, "seed": seed},
        "autoencoder": ae.source,
    }


# ---------------------------------------------------------------------------------------------------------------------
# ldm eval


def _run_settings(run: Path) -> tuple[Path, Any]:
    """(output folder, run Config or None): a run folder writes into itself, a bare pipeline folder into itself."""
    from ldm.config import load_config

    cfg_path = RunFolder(run).config_path
    cfg = None
    if cfg_path.is_file():
        try:
            cfg = load_config(cfg_path)
        except Exception:  # an older or foreign config: evaluation does not need it
            cfg = None
    return run, cfg


def _load_classifier(
    scan: FolderScan,
    image_size: int,
    channels: int,
    cache_dir: str | Path | None,
    steps: int | None,
    device: str,
    log: Callable[[str], Any] | None,
) -> Any:
    """The class classifier of the real data at this image size (trained on first use, then cached)."""
    from ldm.evaluation.classifier import TRAIN_STEPS, load_or_train_classifier

    return load_or_train_classifier(
        scan,
        image_size=image_size,
        channels=channels,
        cache_dir=cache_dir,
        steps=steps or TRAIN_STEPS,
        device=device,
        log=log,
    )


def evaluate_run(
    run: str | Path,
    real: str | Path,
    *,
    num_samples: int = 200,
    scheduler: str = "dpm++",
    num_inference_steps: int = 25,
    guidance_scale: float | None = None,
    seed: int = 0,
    device: str | None = None,
    batch_size: int = 16,
    min_per_class: int = MIN_PER_CLASS,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    num_pairs: int = 8,
    cache_dir: str | Path | None = None,
    classifier_steps: int | None = None,
    write: bool = True,
    log: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a run (or exported pipeline) folder against the real dataset; write ``eval.json``, ``eval.md`` and
    ``memorisation.png`` into it and refresh the evaluation section of the pipeline's model card (``write=True``);
    return the ``eval.json`` dict.

    ``num_samples`` images are generated, cycling through the classes (image i: class ``i % K``, seed ``seed + i``).
    ``guidance_scale`` defaults to the run's ``sampling.guidance_scale`` (3.0 without a run config).
    """
    from ldm.data.folders import scan_image_folder
    from ldm.device import resolve_device
    from ldm.diffusion.pipeline import load_pipeline
    from ldm.evaluation.inception import load_inception
    from ldm.model_card import CARD, EVAL_HASH_KEY, refresh_model_card, unet_files_hash
    from ldm.utils import atomic_write_json, atomic_write_text, recorded_path

    log = log or (lambda m: None)
    t_start = time.time()
    run = Path(run)
    if num_samples < 2:
        raise UserError(f"--num-samples must be at least 2 (FID/KID need two images), got {num_samples}")
    device = resolve_device(device)
    extractor = load_inception(device=device)  # fails early, naming the extra, before any generation
    folder = RunFolder.find_pipeline(run)
    out_dir, cfg = _run_settings(run if run.is_dir() else folder)
    if guidance_scale is None:
        guidance_scale = float(cfg.sampling.guidance_scale) if cfg is not None else 3.0
    scan = scan_image_folder(real)
    pipe = load_pipeline(folder, device=device)
    model_classes = pipe.class_names
    to_data = _class_map(model_classes, scan.classes, real)

    class_ids = [i % len(model_classes) for i in range(num_samples)]
    log(f"generating {num_samples} images of {len(model_classes)} classes on {device}")
    t0 = time.time()
    fake = generate_images(
        pipe,
        class_ids,
        scheduler=scheduler,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        seed=seed,
        batch_size=batch_size,
        log=log,
    )
    gen_seconds = time.time() - t0
    channels, image_size = int(fake.shape[1]), int(fake.shape[-1])
    fake_labels = np.asarray([to_data[c] for c in class_ids])  # in the real data's label space

    realset = load_real_set(scan, image_size, channels, extractor, cache_dir, log)
    log(f"generated features: {len(fake)} images through Inception")
    fake_feats = extractor(fake)
    real_feats = realset.features
    kid, kid_std = kernel_inception_distance(real_feats, fake_feats, kid_subsets, kid_subset_size, seed)
    fid = frechet_distance(real_feats, fake_feats)
    per_class = per_class_fid_kid(
        real_feats, realset.labels.numpy(), fake_feats, fake_labels, scan.classes, min_per_class, kid_subsets, seed
    )
    per_class = {k: v for k, v in per_class.items() if k in model_classes}

    clf = _load_classifier(scan, image_size, channels, cache_dir, classifier_steps, device, log)
    predicted = clf.predict(fake).numpy()
    acc = class_accuracy(predicted, fake_labels, scan.classes)
    acc["per_class"] = {k: v for k, v in acc["per_class"].items() if k in model_classes}
    acc["counts"] = {k: v for k, v in acc["counts"].items() if k in model_classes}

    fig_path = RunFolder(out_dir).memorisation_plot_path
    captions = [model_classes[c] for c in class_ids]
    memorised = memorisation_report(
        fake, fake_feats, realset, scan, captions, seed, num_pairs, fig_path if write else None
    )

    fraction = float(cfg.data.holdout_fraction) if cfg is not None else 0.1
    ae_seed = int(cfg.autoencoder.seed) if cfg is not None else 0
    log("autoencoder reconstruction on held-out real images")
    recon = heldout_reconstruction(folder, realset, fraction, ae_seed, device=device, batch_size=batch_size)

    result = {
        "model": str(run),
        "pipeline": str(folder),
        "real": {
            "data_dir": str(scan.root),
            "num_images": len(realset.images),
            "classes": len(scan.classes),
            "image_size": image_size,
            "channels": channels,
        },
        "settings": {
            "num_samples": num_samples,
            "scheduler": scheduler,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "seed": seed,
            "device": device,
            "kid_subsets": kid_subsets,
            "kid_subset_size": min(kid_subset_size, len(realset.images), num_samples),
            "min_per_class": min_per_class,
        },
        "features": extractor.describe(),
        "fid": fid,
        "kid": kid,
        "kid_std": kid_std,
        "per_class": per_class,
        "class_accuracy": acc,
        "classifier": clf.summary(),
        "reconstruction": recon,
        "memorisation": memorised,
        "seconds": {"generation": round(gen_seconds, 1), "total": round(time.time() - t_start, 1)},
        EVAL_HASH_KEY: unet_files_hash(folder),  # the weights measured: a model card shows only their numbers
    }
    if write:
        written = RunFolder(out_dir)
        # its paths as the run folder records paths (relative inside a workspace; see ldm.run_folder.portable_paths)
        on_disk = {
            **result,
            "model": recorded_path(run, written.path),
            "pipeline": recorded_path(folder, written.path),
            "real": portable_paths(result["real"], written.path, writing=True),
        }
        atomic_write_json(written.eval_path, on_disk)  # NaN -> null: strict JSON
        atomic_write_text(written.eval_report_path, eval_markdown(result))
        card = refresh_model_card(folder, written.eval_path)
        log(f"wrote {written.eval_path}, {written.eval_report_path} and {fig_path}")
        log(f"model card: {card}" if card else f"{folder / CARD} has no evaluation section of ldm's: left as it is")
    return result


def memorisation_report(
    fake: torch.Tensor,
    fake_feats: np.ndarray,
    realset: Any,
    scan: FolderScan,
    captions: list[str],
    seed: int,
    num_pairs: int,
    figure: Path | None,
) -> dict[str, Any]:
    """The ``memorisation`` section of ``eval.json``: how close generated images come to their nearest training
    image in Inception space, the ``num_pairs`` closest pairs (image i was generated with seed ``seed + i``), and
    their side-by-side figure written to ``figure`` (None: no figure)."""
    from ldm.figures import memorisation_figure

    mem = memorisation(fake_feats, realset.features)
    shown = (
        memorisation_figure(fake, realset.images, mem, figure, num_pairs, captions)
        if figure is not None
        else [int(i) for i in np.argsort(mem["nn_distance"])[:num_pairs]]
    )
    pairs = [
        {
            "generated_index": i,
            "class": captions[i],
            "seed": seed + i,
            "training_image": str(Path(scan.samples[mem["nn_index"][i]][0]).relative_to(scan.root)),
            "distance": mem["nn_distance"][i],
            "ratio": mem["nn_distance"][i] / mem["threshold"] if mem["threshold"] > 0 else None,
        }
        for i in shown
    ]
    return {
        "feature_space": "L2-normalised Inception pool3 features",
        "threshold": mem["threshold"],
        "threshold_definition": "median over real images of the distance to their nearest other real image",
        "share_below_threshold": mem["share_below_threshold"],
        "median_ratio": mem["median_ratio"],
        "figure": RunFolder.MEMORISATION_PLOT,
        "closest_pairs": pairs,
    }


# ---------------------------------------------------------------------------------------------------------------------
# cheap evaluation during training


class QuickEvaluator:
    """Small-sample KID and class accuracy for training-time evaluation (``eval_every`` steps).

    Built once per run: loads the real images, their Inception features and the class classifier (both cached per
    dataset), so each call only generates ``num_samples`` images and extracts their features (about
    ``num_samples * 0.5`` s of Inception on a CPU plus sampling). Images are generated with fixed seeds, so the
    numbers of successive calls differ only by the model.
    """

    def __init__(
        self,
        real: str | Path,
        *,
        image_size: int,
        channels: int,
        num_samples: int = 40,
        scheduler: str = "dpm++",
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        seed: int = 0,
        device: str = "cpu",
        cache_dir: str | Path | None = None,
        classifier_steps: int | None = None,
        log: Callable[[str], Any] | None = None,
    ) -> None:
        from ldm.data.folders import scan_image_folder
        from ldm.evaluation.inception import load_inception

        if num_samples < 2:
            raise UserError(f"quick evaluation needs at least 2 samples, got {num_samples}")
        self.num_samples = num_samples
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.device = device
        self.extractor = load_inception(device=device)
        scan = scan_image_folder(real)
        self.real = load_real_set(scan, image_size, channels, self.extractor, cache_dir, log)
        self.classifier = _load_classifier(scan, image_size, channels, cache_dir, classifier_steps, device, log)

    def __call__(self, pipe: Any) -> dict[str, Any]:
        """Generate with ``pipe`` (its UNet's ``training`` flag is restored), then ``{"eval_kid", "eval_kid_std",
        "eval_class_accuracy", "eval_num_samples", "eval_seconds"}`` (KID against all real images; accuracy = share
        recognised as the requested class)."""
        t0 = time.time()
        class_names = pipe.class_names
        to_data = _class_map(class_names, self.real.scan.classes, self.real.scan.root)
        class_ids = [i % len(class_names) for i in range(self.num_samples)]
        fake = generate_images(
            pipe,
            class_ids,
            scheduler=self.scheduler,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            batch_size=self.num_samples,
        )
        if fake.shape[1] != self.real.images.shape[1]:
            from ldm.evaluation.classifier import match_channels

            fake = match_channels(fake, self.real.images.shape[1])
        feats = self.extractor(fake)
        kid, kid_std = kernel_inception_distance(self.real.features, feats, num_subsets=50, seed=self.seed)
        labels = np.asarray([to_data[c] for c in class_ids])
        acc = class_accuracy(self.classifier.predict(fake).numpy(), labels, self.real.scan.classes)["overall"]
        return {
            "eval_kid": kid,
            "eval_kid_std": kid_std,
            "eval_class_accuracy": acc,
            "eval_num_samples": self.num_samples,
            "eval_seconds": round(time.time() - t0, 1),
        }


def quick_eval(evaluator: QuickEvaluator, pipe: Any) -> dict[str, Any]:
    """One training-time evaluation (see :class:`QuickEvaluator`) of ``pipe`` (the trainer wraps its EMA UNet, the
    cache's autoencoder and a sampler in a pipeline); returns a dict to merge into a metrics.jsonl row."""
    return evaluator(pipe)
