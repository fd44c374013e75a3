from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ldm.cli import main
from ldm.data.synth import SYNTH_CLASSES, draw_face, is_synthetic_dataset, make_synth_faces


def test_synth_faces_layout_and_determinism(tmp_path):
    a = make_synth_faces(tmp_path / "a", per_class=3, seed=0)
    assert len(a) == 3 * len(SYNTH_CLASSES)
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir()) == list(SYNTH_CLASSES)
    assert is_synthetic_dataset(tmp_path / "a")  # the marker a model card reads
    for p in a:
        with Image.open(p) as im:
            assert im.mode == "RGB" and im.size == (64, 64)
    b = make_synth_faces(tmp_path / "b", per_class=4, seed=0)  # more per class: the first 3 are unchanged
    make_synth_faces(tmp_path / "c", per_class=3, seed=1)
    for name in SYNTH_CLASSES:
        for i in range(3):
            rel = f"{name}/{i:04d}.png"
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
            assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes()
    assert len(b) == 4 * len(SYNTH_CLASSES)


def test_expressions_differ_on_the_same_face():
    # same appearance draws (same generator state), different expression => many pixels differ strongly
    for seed in range(4):
        imgs = {e: np.asarray(draw_face(np.random.default_rng(seed), e), dtype=np.float32) for e in SYNTH_CLASSES}
        for i, e in enumerate(SYNTH_CLASSES):
            for f in SYNTH_CLASSES[i + 1 :]:
                assert (np.abs(imgs[e] - imgs[f]).max(-1) > 60).sum() > 30, (seed, e, f)
    # images vary: not a constant colour, and different faces are different
    assert imgs["smiling"].std() > 20
    with pytest.raises(ValueError, match="accepted"):
        draw_face(np.random.default_rng(0), "angry")


def test_cli_synth_faces(tmp_path, capsys):
    assert main(["data", "synth-faces", "--out", str(tmp_path / "d"), "--per-class", "2", "--seed", "3"]) == 0
    assert "wrote 10 images" in capsys.readouterr().out
    assert len(list((tmp_path / "d").rglob("*.png"))) == 10
    assert main(["data", "synth-faces", "--out", str(tmp_path / "e"), "--per-class", "0"]) == 2
    assert "--per-class" in capsys.readouterr().err
