"""The latent cache: every image of a class-folder dataset encoded once by a frozen autoencoder.

    ldm prepare --data data/synth-faces --vae runs/vae --out data/latents/synth-faces

Layout (the one the original project used, plus a manifest)::

    CACHE/<class>/<n>.npy   float32 (C, H, W), already multiplied by the scaling factor; n = index within the class
    CACHE/latents.npy       all latents (N, C, H, W) in label order, and CACHE/labels.npy (N,) int64: fast loading
    CACHE/mirrored.npy      with data.hflip: the latent of each image mirrored left-right (N, C, H, W), same order
    CACHE/manifest.json     classes, counts, sizes, autoencoder source and content hash, scaling factor, ...

``manifest.json`` (:class:`ldm.data.manifest.Manifest`) is written last, atomically: a cache without it is
incomplete (a killed ``prepare``) and :func:`load_latent_cache` refuses it. While a cache is being written,
``CACHE/.incomplete`` marks it as ours, so a rerun may finish it, while a folder that is neither a cache nor empty
is never overwritten.

Why mirrored latents are encoded rather than flipped: the autoencoder is not equivariant to mirroring (its
convolutions are not symmetric), so a flipped latent decodes to a different, damaged image. Measured on att-faces-20
with the 5-minute autoencoder of configs/faces.yaml: decode(flip(z)) reaches 21.6 dB against the mirrored image,
decode(encode(mirrored image)) 34.5 dB.

The scaling factor is applied here and only here (the latent diffusion paper, section 4.3.2 / appendix G: scale
latents to unit variance). ``autoencoder.scaling_factor`` chooses it: a number; ``"config"`` = the autoencoder
config's ``scaling_factor`` when it has one, else unit variance; ``"auto"`` = ``1 / std`` of all the dataset's
unscaled latents.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ldm.choices import SCALING_FACTOR_MODES
from ldm.config import Config, to_dict
from ldm.data.folders import PREPROCESSING, FolderScan, ImageFolderDataset, list_class_files, scan_image_folder
from ldm.data.manifest import FORMAT_VERSION, MANIFEST, MIRRORED, AutoencoderInfo, LatentStats, Manifest
from ldm.device import resolve_device
from ldm.errors import CacheMismatchError, DataError, UserError
from ldm.utils import atomic_dir, check_output_folder, hash_folder

if TYPE_CHECKING:
    import torch

MARKER = ".incomplete"  # present while prepare writes the folder; removed after the manifest is in place


@dataclass
class LatentCache:
    """A loaded cache: ``latents`` (N, C, H, W) float32, already scaled; ``labels`` (N,) int64 in [0, len(classes))."""

    latents: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    manifest: Manifest
    scaling_factor: float
    latent_shape: tuple[int, int, int]
    mirrored: torch.Tensor | None = None  # (N, C, H, W): the latents of the mirrored images (data.hflip), or None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def data_fingerprint(scan: FolderScan) -> str:
    """Hash of the relative path, size and modification time of every used file: changes when the data does."""
    h = hashlib.sha256()
    for path, label in scan.samples:
        st = path.stat()
        h.update(f"{path.relative_to(scan.root).as_posix()}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def listing_fingerprint(root: str | Path) -> str:
    """Like :func:`data_fingerprint` but over every candidate file (readable or not), found without opening any:
    when it is unchanged, so is the set of usable files, and a cache check needs no image decoding."""
    root = Path(root)
    h = hashlib.sha256()
    for name, files in list_class_files(root).items():
        for path in files:
            st = path.stat()
            h.update(f"{name}\0{path.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _quick_up_to_date(old: Manifest, data_dir: Path, vae_source: str, settings: dict) -> bool:
    """True when the complete cache described by ``old`` certainly matches: same settings, same file listing and the
    same autoencoder folder content, checked without loading the autoencoder or decoding images."""
    ae = old.autoencoder
    if any(getattr(old, k) != v for k, v in settings.items()) or ae.source != str(vae_source) or not ae.folder:
        return False
    try:
        if old.listing_fingerprint != listing_fingerprint(data_dir):
            return False
    except (DataError, OSError):
        return False
    return Path(ae.folder).is_dir() and hash_folder(ae.folder) == ae.content_hash


def _scaling_setting(cfg: Config) -> float | str:
    s = cfg.autoencoder.scaling_factor
    if isinstance(s, str):
        if s not in SCALING_FACTOR_MODES:
            raise UserError(f"autoencoder.scaling_factor must be a number, 'config' or 'auto', got {s!r}")
        return s
    if not s > 0:
        raise UserError(f"autoencoder.scaling_factor must be positive, got {s}")
    return float(s)


def _is_cache_dir(out: Path) -> bool:
    return Manifest.exists(out) or (out / MARKER).exists()


def _read_manifest(out: Path) -> Manifest | None:
    try:
        return Manifest.load(out)
    except FileNotFoundError:
        return None


def _differences(old: Manifest, new: Manifest) -> list[str]:
    """What makes an existing manifest ``old`` a different cache from the one ``new`` describes."""
    diffs = []

    def cmp(label: str, a: Any, b: Any) -> None:
        if a != b:
            diffs.append(f"{label}: cache has {a!r}, requested {b!r}")

    cmp("format_version", old.format_version, new.format_version)
    cmp("autoencoder content hash", old.autoencoder.content_hash, new.autoencoder.content_hash)
    cmp("image_size", old.image_size, new.image_size)
    cmp("channels", old.channels, new.channels)
    cmp("preprocessing", old.preprocessing, new.preprocessing)
    cmp("scaling_factor setting", old.scaling_factor_setting, new.scaling_factor_setting)
    cmp("data_dir", old.data_dir, new.data_dir)
    cmp("mirrored latents (data.hflip)", bool(old.mirrored), bool(new.mirrored))
    if old.data_dir == new.data_dir and old.data_fingerprint != new.data_fingerprint:
        diffs.append("data: files were added, removed or modified since the cache was made")
    return diffs


def _check_replaceable(out: Path) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder that is not a latent cache (never deleted)."""
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--out {out} is a file; give a folder for the latent cache")
        if any(out.iterdir()) and not _is_cache_dir(out):
            raise UserError(
                f"--out {out} exists, is not empty and is not a latent cache (no {MANIFEST}); "
                "refusing to write into it: choose a new or empty folder"
            )


def _remove_stale_builds(out: Path) -> None:
    """Delete the ``.tmp-<name>-*`` folders that killed runs of ``prepare`` left beside ``out``."""
    if out.parent.is_dir():
        for p in out.parent.glob(f".tmp-{out.name}-*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def _save_npy(path: Path, a: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, a, allow_pickle=False)


def prepare_latents(
    data_dir: str | Path,
    vae_source: str,
    out: str | Path,
    cfg: Config,
    batch_size: int = 32,
    device: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    pack: bool = True,
) -> Manifest:
    """Encode every readable image of ``data_dir/<class>/...`` with the autoencoder at ``vae_source`` into ``out``.

    Images are loaded as ``cfg.data.image_size`` squares with ``cfg.data.channels`` channels in [-1, 1]; the cache
    holds the posterior means times the scaling factor (see the module docstring). Returns the manifest.

    If ``out`` already holds a complete cache of the same data, autoencoder (content hash), preprocessing and
    scaling setting, nothing is done. A cache that differs raises :class:`CacheMismatchError` naming what differs,
    unless ``overwrite``. An incomplete cache (a killed run) is rebuilt.
    """
    out = check_output_folder(out)
    device = resolve_device(device)
    image_size, channels = cfg.data.image_size, cfg.data.channels
    if channels not in (1, 3):
        raise UserError(f"data.channels must be 1 (grey) or 3 (RGB), got {channels}")
    if image_size < 1:
        raise UserError(f"data.image_size must be positive, got {image_size}")
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    setting = _scaling_setting(cfg)
    root = Path(data_dir).resolve()
    if out.resolve().is_relative_to(root):
        raise UserError(
            f"--out {out} is inside the dataset folder {data_dir}: it would be read as a class folder next time; "
            "put the cache elsewhere (e.g. data/latents/<name>)"
        )
    preprocessing = {**PREPROCESSING, "image_size": image_size, "channels": channels}
    settings = {
        "format_version": FORMAT_VERSION,
        "image_size": image_size,
        "channels": channels,
        "preprocessing": json.loads(json.dumps(preprocessing)),  # as it reads back from JSON
        "scaling_factor_setting": setting,
        "data_dir": str(root),
        "mirrored": True if cfg.data.hflip else None,  # None, as manifests from before mirrored latents read
    }
    # a local autoencoder by its absolute path (the manifest stores it relative to the cache inside a workspace)
    vae_source = str(Path(vae_source).resolve()) if Path(str(vae_source)).exists() else str(vae_source)
    old = _read_manifest(out) if out.is_dir() and not overwrite else None
    if old is not None and _quick_up_to_date(old, root, vae_source, settings):
        print(f"latent cache {out} is up to date ({old.num_images} latents); nothing to do")
        return old

    from ldm.models import autoencoder as ae_lib

    scan = scan_image_folder(data_dir)
    ae = ae_lib.load_autoencoder(vae_source, device=device)
    if ae.in_channels != channels:
        raise UserError(
            f"the autoencoder {vae_source} takes {ae.in_channels}-channel images but data.channels={channels}; "
            f"set data.channels={ae.in_channels}"
        )
    if image_size % ae.down_factor:
        raise UserError(
            f"data.image_size={image_size} is not a multiple of the autoencoder's down factor {ae.down_factor}"
        )

    manifest = Manifest(  # latent_shape, scaling_factor and what follows them are filled in after encoding
        format_version=FORMAT_VERSION,
        classes=scan.classes,
        counts=scan.counts(),
        num_images=len(scan.samples),
        image_size=image_size,
        channels=channels,
        autoencoder=AutoencoderInfo(
            source=str(vae_source),
            class_name=type(ae.model).__name__,
            content_hash=ae.content_hash,
            down_factor=ae.down_factor,
            latent_channels=ae.latent_channels,
            config_scaling_factor=ae.scaling_factor,
            config_shift_factor=getattr(ae.model.config, "shift_factor", None),
            folder=str(Path(ae.folder).resolve()) if getattr(ae, "folder", None) else None,
        ),
        scaling_factor_setting=setting,
        preprocessing=preprocessing,
        mirrored=settings["mirrored"],
        data_dir=str(root),
        data_fingerprint=data_fingerprint(scan),
        listing_fingerprint=listing_fingerprint(scan.root),
    )

    if old is not None:
        diffs = _differences(old, manifest)
        if not diffs:
            print(f"latent cache {out} is up to date ({old.num_images} latents); nothing to do")
            return old
        raise CacheMismatchError(
            f"the latent cache in {out} was made differently:\n  "
            + "\n  ".join(diffs)
            + "\nrefusing to mix them: give a new --out folder, or --overwrite to replace this cache"
        )
    _check_replaceable(out)
    _remove_stale_builds(out)

    # encode everything first (unscaled): the "auto" scaling factor needs the statistics of the whole dataset
    t0 = time.perf_counter()
    ds = ImageFolderDataset(scan, image_size, channels)
    z, mirrored = _encode_all(ae, ds, device, batch_size, cfg.data.num_workers, progress, mirror=cfg.data.hflip)
    seconds = time.perf_counter() - t0
    std = float(z.std(dtype=np.float64))
    scale = _scaling_factor(setting, z, ae.scaling_factor)
    z *= np.float32(scale)
    # The new cache is built beside ``out`` and swapped in once complete: a kill before the swap leaves the old
    # cache (the one --overwrite replaces) as it was, and never a half-written one at ``out``.
    with atomic_dir(out) as build:
        _write_into(build, manifest, z, mirrored, scale, scan, pack, cfg, device, seconds, std)
    return manifest


def _write_into(
    out: Path,
    manifest: Manifest,
    z: np.ndarray,
    mirrored: np.ndarray | None,
    scale: float,
    scan: FolderScan,
    pack: bool,
    cfg: Config,
    device: str,
    seconds: float,
    std: float,
) -> None:
    """Write the scaled latents ``z`` (and the mirrored ones) and the completed ``manifest`` into ``out``."""
    manifest.files = _write_latents(out, z, scan, pack)
    if mirrored is not None:
        _save_npy(out / MIRRORED, mirrored * np.float32(scale))
    manifest.latent_stats = LatentStats(  # of the unscaled latents
        mean=float(z.mean(dtype=np.float64) / scale),
        std=std,
        channel_mean=(z.mean(axis=(0, 2, 3), dtype=np.float64) / scale).tolist(),
        channel_std=(z.std(axis=(0, 2, 3), dtype=np.float64) / scale).tolist(),
    )
    manifest.latent_shape = list(z.shape[1:])
    manifest.scaling_factor = scale
    manifest.packed = ["latents.npy", "labels.npy"] if pack else []
    manifest.skipped = [[p.relative_to(scan.root).as_posix(), reason] for p, reason in scan.skipped]
    manifest.config = to_dict(cfg.data)
    manifest.device = str(device)
    manifest.encode_seconds = round(seconds, 3)
    manifest.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest.save(out)  # last: from now on the cache is complete


def _encode_all(
    ae: Any,
    ds: ImageFolderDataset,
    device: str,
    batch_size: int,
    num_workers: int,
    progress: bool,
    mirror: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Unscaled posterior means of every image of ``ds``, in order: float32 ``(N, C, H, W)``; with ``mirror`` also
    those of the images mirrored left-right (each image is read once), else None."""
    import torch

    from ldm.models.autoencoder import encode
    from ldm.progress import progress_bar

    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    chunks, mirrored = [], []
    with (
        torch.inference_mode(),
        progress_bar(total=len(ds), desc="encoding", unit="img", disable=not progress, dynamic_ncols=True) as bar,
    ):
        for images, _ in loader:
            chunks.append(encode(ae, images.to(device)).float().cpu().numpy())
            if mirror:
                mirrored.append(encode(ae, images.flip(-1).to(device)).float().cpu().numpy())
            bar.update(len(images))
    return np.concatenate(chunks), (np.concatenate(mirrored) if mirror else None)


def _scaling_factor(setting: str, z: np.ndarray, config_scaling_factor: float | None) -> float:
    """The factor latents are multiplied by: 1/std for "auto" (or "config" without one), the autoencoder's
    ``scaling_factor`` for "config", else the number given."""
    if setting == "auto" or (setting == "config" and config_scaling_factor is None):
        std = float(z.std(dtype=np.float64))
        if not std > 0:
            raise UserError("all latents are identical (std 0): cannot scale them to unit variance")
        return 1.0 / std
    if setting == "config":
        return float(config_scaling_factor)
    return float(setting)


def _write_latents(out: Path, z: np.ndarray, scan: FolderScan, pack: bool) -> list[dict[str, Any]]:
    """``out/<class>/<n>.npy`` per image (and the packed arrays); returns the manifest's ``files`` entries."""
    files = []
    index = {name: 0 for name in scan.classes}
    for i, (path, label) in enumerate(scan.samples):
        name = scan.classes[label]
        (out / name).mkdir(exist_ok=True)
        rel = f"{name}/{index[name]}.npy"
        index[name] += 1
        _save_npy(out / rel, np.ascontiguousarray(z[i]))
        files.append({"latent": rel, "image": path.relative_to(scan.root).as_posix(), "label": int(label)})
    if pack:
        _save_npy(out / "latents.npy", z)
        _save_npy(out / "labels.npy", np.array([label for _, label in scan.samples], dtype=np.int64))
    return files


def load_latent_cache(path: str | Path) -> LatentCache:
    """Load a cache written by :func:`prepare_latents` (the packed arrays when present, else the per-image files).

    Raises :class:`UserError` for a missing folder, an incomplete cache (no manifest: ``prepare`` did not finish)
    or files that do not match the manifest.
    """
    import torch

    path = Path(path)
    hint = f"make it with: ldm prepare --data DATA_DIR --vae VAE --out {path}"
    if not path.is_dir():
        raise UserError(f"no latent cache at {path} (folder not found); {hint}")
    manifest = _read_manifest(path)
    if manifest is None:
        if (path / MARKER).exists() or any(path.rglob("*.npy")):
            raise UserError(
                f"the latent cache in {path} is incomplete (no {MANIFEST}: ldm prepare was interrupted); "
                f"run ldm prepare again with the same --out to finish it"
            )
        raise UserError(f"{path} is not a latent cache (no {MANIFEST}); {hint}")
    if manifest.format_version != FORMAT_VERSION:
        raise UserError(
            f"{Manifest.path(path)} has format_version {manifest.format_version!r}; this version of ldm reads "
            f"{FORMAT_VERSION}: rebuild it with ldm prepare --overwrite"
        )
    shape = tuple(int(s) for s in manifest.latent_shape)
    n = int(manifest.num_images)
    try:
        if manifest.packed and (path / "latents.npy").is_file():
            z = np.load(path / "latents.npy", allow_pickle=False)
            y = np.load(path / "labels.npy", allow_pickle=False)
        else:
            entries = manifest.entries(path)
            z = np.stack([np.load(path / rel, allow_pickle=False) for rel, _ in entries]) if entries else np.zeros(0)
            y = np.array([label for _, label in entries], dtype=np.int64)
    except (OSError, ValueError) as e:
        raise UserError(
            f"the latent cache in {path} is damaged ({e}); rebuild it with ldm prepare --overwrite"
        ) from None
    if z.shape != (n, *shape) or y.shape != (n,):
        raise UserError(
            f"the latent cache in {path} is damaged: found latents {z.shape} and labels {y.shape}, manifest says "
            f"{n} latents of shape {shape}; rebuild it with ldm prepare --overwrite"
        )
    mirrored = None
    if manifest.mirrored:
        try:
            mirrored = np.load(path / MIRRORED, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(
                f"the latent cache in {path} is damaged ({e}); rebuild it with ldm prepare --overwrite"
            ) from None
        if mirrored.shape != z.shape:
            raise UserError(
                f"the latent cache in {path} is damaged: {MIRRORED} holds {mirrored.shape}, the latents {z.shape}; "
                "rebuild it with ldm prepare --overwrite"
            )
        mirrored = torch.from_numpy(np.ascontiguousarray(mirrored, dtype=np.float32))
    return LatentCache(
        latents=torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)),
        labels=torch.from_numpy(y.astype(np.int64)),
        classes=list(manifest.classes),
        manifest=manifest,
        scaling_factor=float(manifest.scaling_factor),
        latent_shape=shape,
        mirrored=mirrored,
    )
