from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.cli import main
from ldm.data.folders import ImageFolderDataset, holdout_split, load_image, scan_image_folder
from ldm.errors import DataError


def _png(path, img: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


@pytest.fixture
def messy(tmp_path):
    """Two classes with every kind of image mode plus broken and non-image files."""
    root = tmp_path / "messy"
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    _png(root / "a" / "rgb.png", Image.fromarray(rgb))
    _png(root / "a" / "grey.png", Image.fromarray(rgb[..., 0]))
    _png(root / "a" / "grey16.png", Image.fromarray((np.arange(400).reshape(20, 20) * 160).astype(np.uint16)))
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half, opaque on the right
    rgba[:, 8:, 3] = 255
    _png(root / "b" / "rgba.png", Image.fromarray(rgba))
    _png(root / "b" / "pal.png", Image.fromarray(rgb).convert("P"))
    _png(root / "b" / "sub" / "nested.png", Image.fromarray(rgb))
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "b" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    full = (root / "a" / "rgb.png").read_bytes()
    (root / "a" / "truncated.png").write_bytes(full[: len(full) // 2])
    (root / "a" / ".hidden.png").write_bytes(full)
    big = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    big.save(root / "b" / "photo.jpg", quality=90)
    jpg = (root / "b" / "photo.jpg").read_bytes()
    (root / "b" / "cut.jpg").write_bytes(jpg[: len(jpg) * 2 // 3])
    (root / ".cache").mkdir()
    return root


def test_scan_skips_and_reports_bad_files(messy):
    scan = scan_image_folder(messy)
    assert scan.classes == ["a", "b"]
    names = [(p.name, label) for p, label in scan.samples]
    assert names == [
        ("grey.png", 0),
        ("grey16.png", 0),
        ("rgb.png", 0),
        ("pal.png", 1),
        ("photo.jpg", 1),
        ("rgba.png", 1),
        ("nested.png", 1),
    ]
    skipped = {p.name: reason for p, reason in scan.skipped}
    assert set(skipped) == {"truncated.png", "notes.txt", "corrupt.png", "cut.jpg"}
    assert "truncated" in skipped["truncated.png"] and "truncated" in skipped["cut.jpg"]
    assert "not an image" in skipped["notes.txt"]
    assert scan.counts() == {"a": 3, "b": 4}
    assert dict(zip([p.name for p, _ in scan.samples], scan.modes))["grey16.png"] == "I;16"
    assert dict(zip([p.name for p, _ in scan.samples], scan.sizes))["photo.jpg"] == (64, 48)


def test_load_image_modes(messy):
    for p, _ in scan_image_folder(messy).samples:
        for c in (1, 3):
            x = load_image(p, 8, c)
            assert x.shape == (c, 8, 8) and x.dtype == torch.float32
            assert x.min() >= -1 and x.max() <= 1
    # 16-bit grey: 0..63840 scaled to 8 bits, not clipped to white
    g16 = load_image(messy / "a" / "grey16.png", 20, 1)
    assert -1.0 <= g16.min() < -0.95 and 0.9 < g16.max() <= 1.0 and g16.std() > 0.3
    # RGBA composited on white: left half white, right half red
    rgba = load_image(messy / "b" / "rgba.png", 16, 3)
    assert torch.allclose(rgba[:, :, :4], torch.ones(3, 16, 4), atol=0.02)
    assert torch.allclose(rgba[:, :, 12:], torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 16, 4), atol=0.02)
    # palette image equals its RGB source
    assert torch.allclose(
        load_image(messy / "b" / "pal.png", 20, 3), load_image(messy / "a" / "rgb.png", 20, 3), atol=0.35
    )


def test_resize_shorter_side_and_centre_crop(tmp_path):
    a = np.zeros((40, 80), np.uint8)  # wide image: white bars at the far left and right are cropped away
    a[:, :10] = 255
    a[:, 70:] = 255
    _png(tmp_path / "wide.png", Image.fromarray(a))
    x = load_image(tmp_path / "wide.png", 10, 1)
    assert x.shape == (1, 10, 10)
    assert torch.allclose(x, -torch.ones_like(x))


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        scan_image_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match="no class subfolders.*loose files"):
        scan_image_folder(tmp_path / "flat")
    (tmp_path / "d" / "good").mkdir(parents=True)
    (tmp_path / "d" / "empty").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "d" / "good" / "x.png")
    with pytest.raises(DataError, match="empty has no readable image"):
        scan_image_folder(tmp_path / "d")
    (tmp_path / "d" / "empty" / "bad.jpg").write_text("nope")
    with pytest.raises(DataError, match="bad.jpg: not an image"):
        scan_image_folder(tmp_path / "d")


def test_dataset_and_holdout(att_faces):
    scan = scan_image_folder(att_faces)
    assert len(scan.classes) == 20 and len(scan.samples) == 200 and scan.classes[:3] == ["s1", "s10", "s11"]
    train, hold = holdout_split(scan.samples, 0.2, seed=0)
    assert sorted(train + hold) == list(range(200)) and len(hold) == 40
    assert (train, hold) == holdout_split(scan.samples, 0.2, seed=0)
    assert hold != holdout_split(scan.samples, 0.2, seed=1)[1]
    labels = [scan.samples[i][1] for i in hold]
    assert all(labels.count(k) == 2 for k in range(20))  # per class
    # tiny classes keep a training image
    tr, ho = holdout_split([("x", 0), ("y", 0), ("z", 1)], 0.5, seed=0)
    assert len(ho) == 1 and {0, 1} <= {[("x", 0), ("y", 0), ("z", 1)][i][1] for i in tr}
    ds = ImageFolderDataset(scan, image_size=16, channels=1, indices=hold)
    x, y = ds[0]
    assert len(ds) == 40 and x.shape == (1, 16, 16) and y == scan.samples[hold[0]][1]
    flip = ImageFolderDataset(scan, image_size=16, channels=1, hflip=True)
    torch.manual_seed(0)
    xs = [flip[0][0] for _ in range(16)]
    assert any(torch.equal(v, xs[0].flip(-1)) for v in xs) and any(torch.equal(v, xs[0]) for v in xs)


def test_inspect_cli(att_faces, capsys):
    assert main(["data", "inspect", str(att_faces)]) == 0
    out = capsys.readouterr().out
    assert "20 classes, 200 images" in out
    assert "s17" in out and "92x112" in out and "L" in out
    assert "skipped: none" in out


def test_inspect_cli_reports_skipped(messy, capsys):
    assert main(["data", "inspect", str(messy)]) == 0
    out = capsys.readouterr().out
    assert "4 files skipped" in out and "b/notes.txt: not an image" in out and "I;16" in out
    assert main(["data", "inspect", str(messy / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err


def test_exif_orientation_and_cmyk(tmp_path):
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :10] = 255  # stored: left half white; EXIF 6 = display rotated 90 degrees clockwise => top half white
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    x = load_image(tmp_path / "rot.jpg", 10, 1)
    assert x[0, :3].mean() > 0.8 and x[0, -3:].mean() < -0.8
    Image.fromarray(a).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert load_image(tmp_path / "cmyk.jpg", 10, 3).shape == (3, 10, 10)
