"""The closest training images of generated images, in the feature space of ``ldm eval``'s memorisation check.

    checker = NearestTraining(cache_dir="~/faces-project/.ldm-cache")
    train = checker.training_set(training_data_of("runs/faces"), image_size=64, channels=1, run="runs/faces")
    found = checker.check(train, read_generated(["smiling-seed7.png"]))
    found.indices[0], found.distances[0]   # the K = 3 nearest training images of image 0, closest first
    found.flagged[0]                       # closer than the threshold: a copy candidate

Distances are between L2-normalised Inception pool3 features (:mod:`ldm.evaluation.inception`), as in
:func:`ldm.evaluation.report.memorisation`. The threshold is the one of the run's evaluation (``eval.json``) when that
was measured on the same training images, else computed the same way: the median over training images of the distance
to their nearest other training image. The training images' features are computed once per dataset and kept where
``ldm eval`` keeps them (``<cache_dir>/inception/<fingerprint>.pt``, :func:`ldm.evaluation.report.load_real_set`): the
fingerprint covers every file's bytes, the image size and the preprocessing, so a changed dataset never reuses stale
features, and an evaluation and a check share them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ldm.errors import UserError
from ldm.evaluation.report import RealSet, _l2_normalise, _pairwise_dist, load_real_set, memorisation
from ldm.run_folder import RunFolder, portable_paths

if TYPE_CHECKING:
    import torch

    from ldm.evaluation.inception import InceptionFeatureExtractor

K = 3  # nearest training images shown per generated image
Progress = Callable[[float, str], Any]  # (fraction done in [0, 1], what is being done)


# ---------------------------------------------------------------------------------------------------------------------
# where a model's training images are


def run_of(model: str | Path) -> Path | None:
    """The run folder of a model folder: the folder itself when it is a run, the run whose ``pipeline/`` it is, or
    None (an exported pipeline folder outside any run)."""
    p = Path(model)
    for candidate in (p, p.parent if p.name == RunFolder.PIPELINE else None):
        if candidate is not None and RunFolder(candidate).is_run:
            return candidate
    return None


def read_evaluation(folder: str | Path) -> dict[str, Any]:
    """The ``eval.json`` of a run (or of a bare pipeline folder ``ldm eval`` wrote into), its paths absolute; {}
    when there is none or it cannot be read."""
    path = RunFolder(folder).eval_path
    try:
        ev = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return portable_paths(ev, path.parent, writing=False) if isinstance(ev, dict) else {}


def training_data_of(model: str | Path) -> Path:
    """The image folder (class subfolders) ``model`` was trained on.

    Looked up in the run's ``inputs.json`` (the latent cache's image folder), then in the manifests of the latent
    caches it names and of its latest checkpoint, then in its evaluation (the images it was compared with). Raises
    UserError saying what is missing: a bare pipeline folder records no training images, and a recorded folder may be
    gone.
    """
    from ldm.data.manifest import Manifest

    p = Path(model)
    run = run_of(p)
    named: list[str] = []
    if run is not None:
        folder = RunFolder(run)
        latents = (folder.read_inputs() or {}).get("latents") or {}
        named.append(latents.get("data_dir"))
        caches = [latents.get("path")]
        ckpt = folder.latest_checkpoint()
        if ckpt is not None:
            caches.append(RunFolder.checkpoint_latents(ckpt))
        for cache in caches:
            if cache and Manifest.exists(cache):
                try:
                    named.append(Manifest.load(cache).data_dir)
                except UserError:  # a broken manifest: try the next record
                    pass
    named.append((read_evaluation(run or p).get("real") or {}).get("data_dir"))
    named = [str(n) for n in named if n]
    for n in named:
        if Path(n).is_dir():
            return Path(n)
    where = RunFolder.display_name(run or p)
    if named:
        raise UserError(
            f"the training images of {where} were in {named[0]}, which is gone: the check compares generated images "
            "with them, so put that folder back"
        )
    if run is None:
        raise UserError(
            f"{where} is an exported pipeline folder that does not record its training images, and the check "
            "compares generated images with them: pick the run it comes from (runs/NAME) as the model"
        )
    raise UserError(
        f"{where} does not record the image folder it was trained on (its latent cache names none), and the check "
        "compares generated images with those images"
    )


def evaluation_threshold(folder: str | Path, real: RealSet) -> float | None:
    """The memorisation threshold of ``folder``'s ``eval.json`` when it was measured on these training images (same
    folder, number of images, size and channels), else None."""
    ev = read_evaluation(folder)
    recorded = ev.get("real") or {}
    threshold = (ev.get("memorisation") or {}).get("threshold")
    if not isinstance(threshold, (int, float)) or not threshold > 0 or not recorded.get("data_dir"):
        return None
    same = (
        Path(recorded["data_dir"]).resolve() == Path(real.scan.root).resolve()
        and recorded.get("num_images") == len(real.images)
        and recorded.get("image_size") == real.images.shape[-1]
        and recorded.get("channels") == real.images.shape[1]
    )
    return float(threshold) if same else None


# ---------------------------------------------------------------------------------------------------------------------
# nearest neighbours


def nearest_training(fake_feats: Any, train_feats: Any, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest training images of each generated image: (indices (M, k) int, distances (M, k) float), closest
    first, between L2-normalised features as :func:`ldm.evaluation.report.memorisation` measures them.

    ``fake_feats`` (M, D), ``train_feats`` (N, D), numpy or torch.
    """
    f = _l2_normalise(np.asarray(fake_feats.detach().cpu() if hasattr(fake_feats, "detach") else fake_feats, float))
    t = _l2_normalise(np.asarray(train_feats.detach().cpu() if hasattr(train_feats, "detach") else train_feats, float))
    d = _pairwise_dist(f, t)
    k = min(k, t.shape[0])
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d, idx, axis=1)


@dataclass
class TrainingSet:
    """A run's training images at the generated images' size, their features and the memorisation threshold."""

    real: RealSet  # images (N, C, S, S) in [-1, 1], features (N, 2048), the folder scan
    threshold: float
    threshold_from: str  # "from the run's evaluation" or "computed from the training images"
    computed: bool  # features computed by this call (False: read from the cache)
    seconds: float

    def __len__(self) -> int:
        return len(self.real.images)

    @property
    def data_dir(self) -> Path:
        return Path(self.real.scan.root)

    def name(self, i: int) -> str:
        """Training image ``i`` as a path inside its dataset folder (``s3/7.pgm``)."""
        return Path(self.real.scan.samples[i][0]).relative_to(self.real.scan.root).as_posix()


@dataclass
class Nearest:
    """The result of :meth:`NearestTraining.check` for M generated images."""

    indices: np.ndarray  # (M, k) training image indices, closest first
    distances: np.ndarray  # (M, k) distances, ascending along each row
    threshold: float

    @property
    def flagged(self) -> np.ndarray:
        """(M,) bool: the nearest training image is closer than the threshold (a copy candidate)."""
        return self.distances[:, 0] < self.threshold


class _NotCached(Exception):
    """Raised inside :func:`load_real_set` when features would have to be computed and the caller said not to."""


class _Reporting:
    """An Inception extractor fed one of its batches at a time, reporting progress after each (or refusing to compute,
    ``compute=False``). Batches are the extractor's own, so the features equal one call's to the bare extractor."""

    def __init__(self, extractor: InceptionFeatureExtractor, progress: Progress | None, compute: bool) -> None:
        self.extractor, self.progress, self.compute, self.used = extractor, progress, compute, False

    def describe(self) -> dict[str, Any]:
        return self.extractor.describe()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        if not self.compute:
            raise _NotCached
        self.used = True
        out, n, b = [], len(images), self.extractor.batch_size
        for i in range(0, n, b):
            if self.progress:
                self.progress(i / n, f"features of the training images: {i}/{n} (computed once, then cached)")
            out.append(self.extractor(images[i : i + b]))
        return torch.cat(out) if out else self.extractor(images)


def _listing(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """(relative path, size, mtime) of every file below ``folder``: a cheap sign that a dataset changed."""
    out = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith("."):
                st = os.stat(os.path.join(root, f))
                out.append((os.path.relpath(os.path.join(root, f), folder), st.st_size, st.st_mtime_ns))
    return tuple(out)


class NearestTraining:
    """Finds the closest training images of generated images; holds the Inception extractor (loaded on first use) and
    the training sets it loaded, in memory while their folder's listing is unchanged and on disk in ``cache_dir``.

    ``cache_dir`` is where ``ldm eval`` caches features (``.ldm-cache`` in the workspace); ``device`` runs Inception.
    Thread-safe: one check runs at a time.
    """

    def __init__(self, cache_dir: str | Path, device: str = "cpu", batch_size: int = 16) -> None:
        self.cache_dir = Path(cache_dir)
        self.device, self.batch_size = device, batch_size
        self._extractor: InceptionFeatureExtractor | None = None
        # (data folder, size, channels) -> (its listing, RealSet, threshold computed from it); or the listing seen
        # when the features were missing, so that asking again without computing costs no image loading
        self._sets: dict[tuple[str, int, int], tuple[Any, RealSet, float]] = {}
        self._missing: dict[tuple[str, int, int], Any] = {}
        self._lock = threading.RLock()

    def extractor(self, progress: Progress | None = None) -> InceptionFeatureExtractor:
        """The Inception extractor, loaded on first use (UserError when its weights are missing)."""
        from ldm.evaluation.inception import load_inception

        with self._lock:
            if self._extractor is None:
                if progress:
                    progress(0.0, "loading the Inception network")
                self._extractor = load_inception(device=self.device, batch_size=self.batch_size)
            return self._extractor

    def _cache_files(self) -> tuple[str, ...]:
        d = self.cache_dir / "inception"
        return tuple(sorted(p.name for p in d.glob("*.pt"))) if d.is_dir() else ()

    def training_set(
        self,
        data_dir: str | Path,
        image_size: int,
        channels: int,
        *,
        run: str | Path | None = None,
        compute: bool = True,
        progress: Progress | None = None,
    ) -> TrainingSet | None:
        """The images of ``data_dir`` at ``image_size`` and ``channels`` (the generated images'), their features and
        the threshold (``run``'s evaluation's when it matches, else computed).

        Features come from memory, else from the cache, else are computed and cached (about 0.3 s per image on a
        2-core CPU; ``progress`` hears of each batch). With ``compute=False`` returns None instead of computing.
        """
        data_dir = Path(data_dir).resolve()
        key = (str(data_dir), int(image_size), int(channels))
        with self._lock:
            t0 = time.perf_counter()
            listing = _listing(data_dir)
            held = self._sets.get(key)
            if held is not None and held[0] == listing:
                real, own_threshold, computed = held[1], held[2], False
            elif not compute and self._missing.get(key) == (listing, self._cache_files()):
                return None
            else:
                reporting = _Reporting(self.extractor(progress), progress, compute)
                if progress:
                    progress(0.0, f"loading the training images of {data_dir.name}")
                try:
                    real = load_real_set(data_dir, int(image_size), int(channels), reporting, self.cache_dir)
                except _NotCached:
                    self._missing[key] = (listing, self._cache_files())
                    return None
                # as ldm eval computes it (the generated side does not enter the threshold)
                own_threshold = float(memorisation(real.features[:1], real.features)["threshold"])
                computed = reporting.used
                self._sets[key] = (listing, real, own_threshold)
                self._missing.pop(key, None)
        # read at each call: an evaluation may have finished since the features were loaded
        threshold = evaluation_threshold(run, real) if run is not None else None
        if threshold is None:
            return TrainingSet(
                real, own_threshold, "computed from the training images", computed, time.perf_counter() - t0
            )
        return TrainingSet(real, threshold, "from the run's evaluation", computed, time.perf_counter() - t0)

    def features(self, images: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """Inception features ``(M, 2048)`` of images ``(M, C, S, S)`` in [-1, 1]."""
        extractor = self.extractor(progress)
        if progress:
            progress(0.0, f"features of {len(images)} generated image(s)")
        with self._lock:
            return extractor(images)

    def check(self, train: TrainingSet, images: torch.Tensor, k: int = K, progress: Progress | None = None) -> Nearest:
        """The ``k`` closest training images of each of ``images`` (M, C, S, S) in [-1, 1] (the training set's size
        and channels) and the threshold."""
        if tuple(images.shape[1:]) != tuple(train.real.images.shape[1:]):
            raise UserError(
                f"generated images of shape {tuple(images.shape[1:])} cannot be compared with training images loaded "
                f"at {tuple(train.real.images.shape[1:])}"
            )
        idx, dist = nearest_training(self.features(images, progress), train.real.features, k)
        return Nearest(idx, dist, train.threshold)


# ---------------------------------------------------------------------------------------------------------------------
# generated images on disk


def read_generated(paths: Sequence[str | Path]) -> torch.Tensor:
    """Generated PNGs as float images ``(M, C, S, S)`` in [-1, 1]: grey (C = 1) when the first is grey, else RGB, at
    the first one's shorter side (they come from one model, so they share size and mode)."""
    import torch
    from PIL import Image, UnidentifiedImageError

    from ldm.data.folders import load_image

    if not paths:
        raise UserError("no image to check: generate images first")
    try:
        with Image.open(paths[0]) as im:
            channels = 1 if im.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
            size = min(im.size)
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"{paths[0]} is not a readable image: {e}") from None
    return torch.stack([load_image(p, size, channels) for p in paths])
