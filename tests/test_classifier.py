"""The class classifier used by ``ldm eval``: trains above chance on a few real face classes, caches itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ldm.evaluation.classifier import load_or_train_classifier, match_channels


@pytest.fixture
def five_faces(att_faces: Path, tmp_path: Path) -> Path:
    """5 of the 20 people (symlinked class folders: the data itself is never copied)."""
    root = tmp_path / "faces5"
    root.mkdir()
    for name in ("s1", "s2", "s3", "s4", "s5"):
        (root / name).symlink_to(att_faces / name, target_is_directory=True)
    return root


def test_classifier_trains_above_chance_and_is_cached(five_faces: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    messages: list[str] = []
    clf = load_or_train_classifier(
        five_faces, image_size=16, channels=1, cache_dir=cache, steps=100, log=messages.append
    )
    assert clf.classes == ["s1", "s2", "s3", "s4", "s5"]
    assert clf.num_holdout == 10 and clf.num_train == 40  # 20% of 10 per class held out
    assert clf.holdout_accuracy >= 0.6  # chance is 0.2
    assert clf.train_accuracy >= 0.8
    assert (clf.path / "model.safetensors").is_file() and (clf.path / "classifier.json").is_file()
    # predict on real images: mostly right, labels in range, grey or RGB input
    from ldm.data.folders import scan_image_folder
    from ldm.evaluation.classifier import load_images

    images, labels = load_images(scan_image_folder(five_faces), 16, 1)
    pred = clf.predict(images)
    assert pred.shape == labels.shape and pred.dtype == torch.long
    assert (pred == labels).float().mean() >= 0.8
    assert torch.equal(clf.predict(images.repeat(1, 3, 1, 1)), pred)
    # second call: loaded from the cache, same predictions, no training
    again = load_or_train_classifier(
        five_faces, image_size=16, channels=1, cache_dir=cache, steps=100, log=messages.append
    )
    assert "cached" in messages[-1]
    assert again.fingerprint == clf.fingerprint and torch.equal(again.predict(images), pred)


def test_fingerprint_follows_content(five_faces: Path, tmp_path: Path):
    from ldm.data.folders import scan_image_folder
    from ldm.evaluation.classifier import dataset_fingerprint

    recipe = {"steps": 1}
    fp = dataset_fingerprint(scan_image_folder(five_faces), 16, 1, recipe)
    assert fp == dataset_fingerprint(scan_image_folder(five_faces), 16, 1, recipe)
    assert fp != dataset_fingerprint(scan_image_folder(five_faces), 32, 1, recipe)
    # one changed image changes the fingerprint
    copy = tmp_path / "copy"
    shutil.copytree(five_faces, copy, symlinks=False)
    first = sorted((copy / "s1").iterdir())[0]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    assert dataset_fingerprint(scan_image_folder(copy), 16, 1, recipe) != dataset_fingerprint(
        scan_image_folder(five_faces), 16, 1, recipe
    )


def test_single_class_is_refused(att_faces: Path, tmp_path: Path):
    from ldm.errors import UserError

    root = tmp_path / "one"
    root.mkdir()
    (root / "s1").symlink_to(att_faces / "s1", target_is_directory=True)
    with pytest.raises(UserError, match="at least 2 classes"):
        load_or_train_classifier(root, image_size=16, channels=1, cache_dir=tmp_path / "c")


def test_match_channels():
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    g = match_channels(x, 1)
    assert g.shape == (2, 1, 4, 4) and g.min() >= -1 and g.max() <= 1
    assert match_channels(g, 3).shape == (2, 3, 4, 4)
