"""The latent cache's manifest, ``CACHE/manifest.json``: how the cache was made, as one typed record.

    m = Manifest.load(cache_dir)                 # FileNotFoundError when absent, UserError when not a manifest
    m.classes, m.autoencoder.source, m.scaling_factor, m.entries(cache_dir)
    m.save(cache_dir)                            # atomic

The JSON keys are the field names, in the order below (the order ``ldm prepare`` has always written them), so
caches written before this class existed load, and caches written now load in older versions. Every field may be
missing from a hand-written manifest (it then reads as ``None``); keys this version does not know are kept in
``extra`` and written back.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldm.errors import UserError
from ldm.utils import atomic_write_json, recorded_path, resolve_recorded

FORMAT_VERSION = 1
MIRRORED = "mirrored.npy"  # (N, C, H, W): the latent of each image mirrored left-right, same order
MANIFEST = "manifest.json"


@dataclass
class AutoencoderInfo:
    """The frozen autoencoder that encoded the cache."""

    source: str | None = None  # as given to prepare: hub id, model folder or train-vae run folder
    class_name: str | None = None  # diffusers class, "AutoencoderKL" or "AutoencoderTiny"
    content_hash: str | None = None  # utils.hash_folder of the model folder: changes when the weights do
    down_factor: int | None = None  # image side / latent side
    latent_channels: int | None = None
    config_scaling_factor: float | None = None  # the model config's scaling_factor (None when it has none)
    # SD3/Flux-style autoencoders also shift latents; recorded, not applied (the pipeline only scales)
    config_shift_factor: float | None = None
    # the model folder itself (a run's vae/, a hub snapshot): lets a rerun check the hash without loading it
    folder: str | None = None


@dataclass
class LatentStats:
    """Statistics of the **unscaled** latents: let a consumer check or redo the scaling."""

    mean: float
    std: float
    channel_mean: list[float]
    channel_std: list[float]


# (section or None, key) of the local paths a manifest records: absolute in memory, on disk relative to the cache when
# inside its workspace (:func:`ldm.utils.recorded_path`), so a moved or copied workspace keeps its caches
PATH_FIELDS = ((None, "data_dir"), ("autoencoder", "source"), ("autoencoder", "folder"))


@dataclass
class Manifest:
    """Contents of ``manifest.json``; see :func:`ldm.data.latents.prepare_latents` for how each field is made."""

    format_version: int | None = None  # FORMAT_VERSION of the writer
    classes: list[str] = field(default_factory=list)  # class names in label order
    counts: dict[str, int] | None = None  # latents per class
    num_images: int | None = None
    image_size: int | None = None  # side of the square images that were encoded, pixels
    channels: int | None = None  # 1 (grey) or 3 (RGB)
    latent_shape: list[int] | None = None  # (C, H, W) of one latent
    autoencoder: AutoencoderInfo = field(default_factory=AutoencoderInfo)
    scaling_factor: float | None = None  # the factor the stored latents were multiplied by
    scaling_factor_setting: float | str | None = None  # autoencoder.scaling_factor: a number, "config" or "auto"
    preprocessing: dict[str, Any] | None = None  # how images were brought to image_size (ldm.data.folders)
    data_dir: str | None = None  # dataset folder (absolute in memory; on disk see PATH_FIELDS)
    data_fingerprint: str | None = None  # latents.data_fingerprint of the used files
    listing_fingerprint: str | None = None  # latents.listing_fingerprint of every candidate file
    latent_stats: LatentStats | None = None
    packed: list[str] | bool | None = None  # the packed arrays beside the per-image files ([] / None: none)
    mirrored: bool | None = None  # True: MIRRORED holds each image's latent mirrored left-right too (data.hflip)
    # one {"latent": "<class>/<n>.npy", "image": relative image path, "label": k} per latent in label order
    # (a hand-written manifest may list plain relative .npy paths instead)
    files: list[dict[str, Any] | str] | None = None
    skipped: list[list[str]] | None = None  # [relative path, reason] of each unreadable file
    config: dict[str, Any] | None = None  # the data config prepare ran with
    device: str | None = None  # where the images were encoded
    encode_seconds: float | None = None
    created: str | None = None  # UTC, ISO 8601
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    @staticmethod
    def path(cache_dir: str | Path) -> Path:
        return Path(cache_dir) / MANIFEST

    @staticmethod
    def exists(cache_dir: str | Path) -> bool:
        """True when ``cache_dir`` holds a manifest, i.e. is a complete latent cache (it is written last)."""
        return Manifest.path(cache_dir).is_file()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        """The manifest of a JSON object; values are kept as read (nested unknown keys are dropped)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in names}
        known = {f.name for f in dataclasses.fields(AutoencoderInfo)}
        kw["autoencoder"] = AutoencoderInfo(**{k: v for k, v in (d.get("autoencoder") or {}).items() if k in known})
        if isinstance(d.get("latent_stats"), dict):
            known = {f.name for f in dataclasses.fields(LatentStats)}
            kw["latent_stats"] = LatentStats(**{k: v for k, v in d["latent_stats"].items() if k in known})
        return cls(**kw, extra={k: v for k, v in d.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in field order, then ``extra``."""
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        if d["mirrored"] is None:  # added after format 1: absent unless set, so older manifests save as they were
            del d["mirrored"]
        return {**d, **extra}

    @classmethod
    def load(cls, cache_dir: str | Path) -> Manifest:
        """Read ``cache_dir/manifest.json``. Raises ``FileNotFoundError`` when it is absent and :class:`UserError`
        when it is not a JSON object."""
        path = cls.path(cache_dir)
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(
                f"{path} is not valid JSON ({e}); rebuild the cache with ldm prepare --overwrite"
            ) from None
        if not isinstance(d, dict):
            raise UserError(f"{path} is not a latent cache manifest (a JSON object); rebuild it with ldm prepare")
        for section, key in PATH_FIELDS:
            holder = d if section is None else d.get(section)
            if isinstance(holder, dict) and key in holder:
                holder[key] = resolve_recorded(holder[key], cache_dir)
        return cls.from_dict(d)

    def save(self, cache_dir: str | Path) -> None:
        """Write ``cache_dir/manifest.json`` atomically (readers never see half a file)."""
        d = self.to_dict()
        for section, key in PATH_FIELDS:
            holder = d if section is None else d.get(section)
            value = holder.get(key) if isinstance(holder, dict) else None
            if isinstance(value, str) and Path(value).is_absolute():  # a hub id stays as it is
                holder[key] = recorded_path(value, cache_dir)
        atomic_write_json(self.path(cache_dir), d)

    def entries(self, cache_dir: str | Path) -> list[tuple[str, int]]:
        """(relative .npy path, label) of every latent in label order, from ``files`` (dicts, or plain relative
        paths inside a class folder); without ``files``, the ``<class>/<n>.npy`` found on disk, listed by n."""
        if self.files is None:
            out = []
            for k, name in enumerate(self.classes):
                found = sorted((Path(cache_dir) / name).glob("*.npy"), key=lambda p: (len(p.stem), p.stem))  # 2 < 10
                out.extend((f"{name}/{p.name}", k) for p in found)
            return out
        out = []
        for f in self.files:
            if isinstance(f, dict):
                out.append((f["latent"], int(f["label"])))
            else:
                name = Path(f).parts[0]
                if name not in self.classes:
                    raise ValueError(
                        f"manifest file entry {f!r} is not inside a class folder ({', '.join(self.classes)})"
                    )
                out.append((str(f), self.classes.index(name)))
        return out

    def describe(self, cache_dir: str | Path) -> str:
        """One paragraph summary of the cache at ``cache_dir`` for the CLI."""
        ae, stats = self.autoencoder, self.latent_stats
        scaled_std = stats.std * self.scaling_factor
        text = (
            f"latent cache {cache_dir}: {self.num_images} latents of shape {tuple(self.latent_shape)} "
            f"in {len(self.classes)} classes\n"
            f"  images {self.image_size}x{self.image_size}, {self.channels} channels; "
            f"autoencoder {ae.source} ({ae.class_name}, hash {ae.content_hash[:12]})\n"
            f"  scaling factor {self.scaling_factor:.6g} ({self.scaling_factor_setting}); "
            f"latent std {scaled_std:.4g} scaled, {stats.std:.4g} unscaled"
        )
        if self.mirrored:
            text += f"\n  with the mirrored image's latent of each ({MIRRORED}; data.hflip)"
        if not 0.5 <= scaled_std <= 2.0:
            text += (
                "\n  note: the scaled latents are far from unit variance (the diffusion noise schedule assumes "
                "about 1); autoencoder.scaling_factor=auto rescales them to 1"
            )
        skipped = self.skipped or []
        if skipped:
            text += f"\n  skipped {len(skipped)} files:"
            text += "".join(f"\n    {p}: {reason}" for p, reason in skipped[:10])
            text += f"\n    ... and {len(skipped) - 10} more (see {MANIFEST})" if len(skipped) > 10 else ""
        return text
