"""The latent cache's manifest: typed access, and the JSON on disk unchanged in both directions."""

from __future__ import annotations

import json

import pytest

from ldm.data.manifest import MANIFEST, AutoencoderInfo, LatentStats, Manifest
from ldm.errors import UserError

# a manifest as `ldm prepare` wrote it before the Manifest class existed (shortened lists, same keys and order)
OLD = {
    "format_version": 1,
    "classes": ["frowning", "sleepy"],
    "counts": {"frowning": 1, "sleepy": 1},
    "num_images": 2,
    "image_size": 16,
    "channels": 3,
    "latent_shape": [4, 8, 8],
    "autoencoder": {
        "source": "runs/vae",
        "class_name": "AutoencoderKL",
        "content_hash": "1c0991a34f153a22",
        "down_factor": 2,
        "latent_channels": 4,
        "config_scaling_factor": 0.18215,
        "config_shift_factor": None,
        "folder": "/w/runs/vae/vae",
    },
    "scaling_factor": 0.18215,
    "scaling_factor_setting": "config",
    "preprocessing": {
        "resize": "shorter side to image_size, bicubic with antialiasing (PIL)",
        "crop": "centre",
        "alpha": "composited on white",
        "value_range": [-1.0, 1.0],
        "image_size": 16,
        "channels": 3,
    },
    "data_dir": "/w/data/faces",
    "data_fingerprint": "67c3e5da9c0b3894",
    "listing_fingerprint": "10bd64027a1f274e",
    "latent_stats": {
        "mean": 0.06295052437505622,
        "std": 0.2524581158074839,
        "channel_mean": [0.13365939311819192, 0.33627120462839866],
        "channel_std": [0.1385344451905857, 0.13673453333799263],
    },
    "packed": ["latents.npy", "labels.npy"],
    "files": [
        {"latent": "frowning/0.npy", "image": "frowning/0000.png", "label": 0},
        {"latent": "sleepy/0.npy", "image": "sleepy/0000.png", "label": 1},
    ],
    "skipped": [["sleepy/broken.png", "not an image"]],
    "config": {"image_size": 16, "channels": 3, "hflip": False, "holdout_fraction": 0.1, "num_workers": 0},
    "device": "cpu",
    "encode_seconds": 0.019,
    "created": "2026-12-02T05:22:02Z",
}


def _write(folder, obj) -> str:
    text = json.dumps(obj, indent=2) + "\n"  # what utils.atomic_write_json writes
    (folder / MANIFEST).write_text(text)
    return text


def test_old_manifest_loads_typed_and_saves_byte_identical(tmp_path):
    text = _write(tmp_path, OLD)
    m = Manifest.load(tmp_path)
    assert m.classes == ["frowning", "sleepy"] and m.num_images == 2 and m.latent_shape == [4, 8, 8]
    assert m.autoencoder == AutoencoderInfo(**OLD["autoencoder"]) and m.autoencoder.source == "runs/vae"
    assert isinstance(m.latent_stats, LatentStats) and m.latent_stats.std == pytest.approx(0.25245811)
    assert m.scaling_factor_setting == "config" and m.extra == {}
    assert m.entries(tmp_path) == [("frowning/0.npy", 0), ("sleepy/0.npy", 1)]
    out = tmp_path / "again"
    out.mkdir()
    m.save(out)
    assert (out / MANIFEST).read_text() == text  # same keys, order, values and layout: old code reads it
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST]  # no temporary file left beside it


def test_a_new_manifest_has_every_old_key_in_order():
    m = Manifest(format_version=1, autoencoder=AutoencoderInfo(source="x"), latent_stats=LatentStats(0, 1, [0], [1]))
    assert list(m.to_dict()) == list(OLD)
    assert list(m.to_dict()["autoencoder"]) == list(OLD["autoencoder"])
    assert list(m.to_dict()["latent_stats"]) == list(OLD["latent_stats"])


def test_partial_and_future_manifests(tmp_path):
    """A hand-written manifest lacks most keys (they read as None); keys of a newer version survive a save."""
    _write(tmp_path, {"autoencoder": {"source": "vae"}, "scaling_factor": 0.7, "future_key": {"a": 1}})
    m = Manifest.load(tmp_path)
    assert m.autoencoder.source == "vae" and m.autoencoder.content_hash is None and m.scaling_factor == 0.7
    assert m.format_version is None and m.latent_stats is None and m.data_dir is None and m.classes == []
    assert m.extra == {"future_key": {"a": 1}}
    m.save(tmp_path)
    assert json.loads((tmp_path / MANIFEST).read_text())["future_key"] == {"a": 1}
    assert Manifest.from_dict({"autoencoder": None}).autoencoder == AutoencoderInfo()


def test_missing_and_broken_manifests(tmp_path):
    assert not Manifest.exists(tmp_path)
    with pytest.raises(FileNotFoundError):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    assert Manifest.exists(tmp_path)
    with pytest.raises(UserError, match="not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST).write_text("[1, 2]")
    with pytest.raises(UserError, match="not a latent cache manifest"):
        Manifest.load(tmp_path)


def test_no_other_module_spells_the_manifest_file():
    """Code outside ldm/data/manifest.py goes through Manifest (docstrings may name the file)."""
    import ast
    from pathlib import Path

    import ldm

    root = Path(ldm.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "data" / "manifest.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(getattr(node, "body", None), list) and node.body and isinstance(node.body[0], ast.Expr)
        }
        offenders += [
            f"{path.relative_to(root)}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            if MANIFEST in node.value
        ]
    assert not offenders, f"use ldm.data.manifest.Manifest instead of spelling {MANIFEST}: {offenders}"
