from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ldm.cli import main
from ldm.config import load_config
from ldm.data.latents import MANIFEST, load_latent_cache, prepare_latents
from ldm.errors import CacheMismatchError, UserError
from ldm.utils import hash_folder


@pytest.fixture
def autoencoder_module():
    import ldm.models.autoencoder

    return ldm.models.autoencoder


@pytest.fixture(autouse=True)
def one_thread():
    # tiny convolutions: one thread is as fast, and much faster when other processes share the 2 cores
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(*overrides):
    return load_config(None, ["data.image_size=16", "data.channels=3", *overrides])


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_prepare_writes_cache_and_reruns_do_nothing(
    att_faces, tiny_vae_dir, tmp_path, capsys, autoencoder_module, monkeypatch
):
    out = tmp_path / "cache"
    m = prepare_latents(
        att_faces,
        str(tiny_vae_dir),
        out,
        _cfg("autoencoder.scaling_factor=auto"),
        device="cpu",
        batch_size=64,
        progress=False,
    )
    for key in (
        "format_version",
        "classes",
        "counts",
        "num_images",
        "image_size",
        "channels",
        "latent_shape",
        "autoencoder",
        "scaling_factor",
        "preprocessing",
        "data_dir",
        "data_fingerprint",
        "files",
        "skipped",
    ):
        assert key in m.to_dict()
    on_disk = json.loads((out / MANIFEST).read_text())
    assert on_disk == json.loads(json.dumps(m.to_dict()))
    assert m.num_images == 200 and m.counts == {f"s{i}": 10 for i in sorted(range(1, 21), key=str)}
    assert m.classes[:3] == ["s1", "s10", "s11"]
    assert m.latent_shape == [4, 8, 8] and m.image_size == 16 and m.channels == 3
    assert m.autoencoder.content_hash == hash_folder(tiny_vae_dir)
    assert m.autoencoder.class_name == "AutoencoderKL"
    assert m.preprocessing["image_size"] == 16 and "centre" in m.preprocessing["crop"]
    assert m.skipped == [] and not (out / ".incomplete").exists()
    assert sorted(p.name for p in (out / "s7").iterdir()) == [f"{n}.npy" for n in range(10)]

    cache = load_latent_cache(out)
    assert cache.latents.shape == (200, 4, 8, 8) and cache.latents.dtype == torch.float32
    assert cache.labels.tolist() == [k for k in range(20) for _ in range(10)]
    assert cache.latent_shape == (4, 8, 8) and cache.classes == m.classes
    assert abs(cache.latents.std().item() - 1.0) < 1e-3  # "auto": unit variance over the dataset
    assert cache.scaling_factor == pytest.approx(1.0 / m.latent_stats.std)
    # per-image files hold the same scaled latents as the packed array, in label order
    first_s10 = m.files[10]
    assert first_s10["latent"] == "s10/0.npy" and first_s10["image"].startswith("s10/") and first_s10["label"] == 1
    assert np.array_equal(np.load(out / "s10" / "0.npy"), cache.latents[10].numpy())
    assert np.load(out / "s10" / "0.npy").dtype == np.float32

    # same inputs: no work (the autoencoder is not even loaded), no file touched
    before = _mtimes(out)
    capsys.readouterr()
    with monkeypatch.context() as mp:
        mp.setattr(autoencoder_module, "load_autoencoder", lambda *a, **k: pytest.fail("loaded the autoencoder"))
        again = prepare_latents(
            att_faces, str(tiny_vae_dir), out, _cfg("autoencoder.scaling_factor=auto"), device="cpu", progress=False
        )
    assert "up to date" in capsys.readouterr().out
    assert again.to_dict() == on_disk and _mtimes(out) == before

    # a different image size or autoencoder is refused, naming what differs
    with pytest.raises(CacheMismatchError, match=r"image_size: cache has 16, requested 8(.|\n)*--overwrite"):
        prepare_latents(
            att_faces, str(tiny_vae_dir), out, load_config(None, ["data.image_size=8"]), device="cpu", progress=False
        )
    other_vae = tmp_path / "other-vae"
    shutil.copytree(tiny_vae_dir, other_vae)
    cfg_json = json.loads((other_vae / "config.json").read_text())
    cfg_json["scaling_factor"] = 0.5
    (other_vae / "config.json").write_text(json.dumps(cfg_json))
    with pytest.raises(CacheMismatchError, match="autoencoder content hash"):
        prepare_latents(
            att_faces, str(other_vae), out, _cfg("autoencoder.scaling_factor=auto"), device="cpu", progress=False
        )
    assert _mtimes(out) == before

    # --overwrite replaces it; "config" takes the autoencoder config's factor
    m2 = prepare_latents(att_faces, str(other_vae), out, _cfg(), device="cpu", progress=False, overwrite=True)
    assert m2.scaling_factor == 0.5 and m2.autoencoder.content_hash == hash_folder(other_vae)
    c2 = load_latent_cache(out)
    assert torch.allclose(c2.latents, cache.latents / cache.scaling_factor * 0.5, atol=1e-5)


def test_killed_prepare_leaves_no_cache_then_rerun_completes(
    att_faces, tiny_vae_dir, tmp_path, autoencoder_module, monkeypatch
):
    """The cache is built beside --out and swapped in when complete: a prepare killed half-way leaves nothing at
    --out that could load (only a .tmp-* folder, which the next run removes)."""
    out = tmp_path / "cache"
    real_encode = autoencoder_module.encode
    calls = []

    def dying_encode(ae, images):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl-C does half-way
        return real_encode(ae, images)

    monkeypatch.setattr(autoencoder_module, "encode", dying_encode)
    with pytest.raises(KeyboardInterrupt):
        prepare_latents(att_faces, str(tiny_vae_dir), out, _cfg(), batch_size=32, device="cpu", progress=False)
    assert not out.exists()
    with pytest.raises(UserError, match="folder not found"):
        load_latent_cache(out)
    (tmp_path / ".tmp-cache-killed").mkdir()  # what a kill -9 during the writing leaves beside it

    monkeypatch.setattr(autoencoder_module, "encode", real_encode)
    m = prepare_latents(att_faces, str(tiny_vae_dir), out, _cfg(), batch_size=32, device="cpu", progress=False)
    cache = load_latent_cache(out)
    assert len(cache) == 200 and not list(tmp_path.glob(".tmp-*"))
    assert m.scaling_factor == pytest.approx(0.18215)  # "config": the diffusers default in the VAE's config

    # a folder left half-written by an older version (its marker, no manifest) is still refused, and rebuilt
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / ".incomplete").touch()
    np.save(legacy / "stray.npy", np.zeros(3, np.float32))
    with pytest.raises(UserError, match="incomplete"):
        load_latent_cache(legacy)
    prepare_latents(att_faces, str(tiny_vae_dir), legacy, _cfg(), device="cpu", progress=False)
    assert len(load_latent_cache(legacy)) == 200 and not (legacy / "stray.npy").exists()


def test_overwrite_that_fails_keeps_the_old_cache(att_faces, tiny_vae_dir, tmp_path, autoencoder_module, monkeypatch):
    out = tmp_path / "cache"
    prepare_latents(att_faces, str(tiny_vae_dir), out, _cfg(), device="cpu", progress=False)
    before = load_latent_cache(out)

    def broken(ae, images):
        raise RuntimeError("boom")

    monkeypatch.setattr(autoencoder_module, "encode", broken)
    with pytest.raises(RuntimeError):
        prepare_latents(
            att_faces, str(tiny_vae_dir), out, _cfg("data.image_size=8"), device="cpu", progress=False, overwrite=True
        )
    after = load_latent_cache(out)  # the old, good cache: --overwrite only replaces it once the new one is complete
    assert torch.equal(after.latents, before.latents) and not list(tmp_path.glob(".tmp-*"))


def test_refuses_foreign_folders_and_bad_settings(att_faces, tiny_vae_dir, tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(UserError, match="not a latent cache"):
            prepare_latents(
                att_faces, str(tiny_vae_dir), foreign, _cfg(), device="cpu", progress=False, overwrite=overwrite
            )
    assert (foreign / "keep.txt").read_text() == "precious"
    with pytest.raises(UserError, match="inside the dataset folder"):
        prepare_latents(att_faces, str(tiny_vae_dir), att_faces / "cache", _cfg(), device="cpu")
    with pytest.raises(UserError, match="3-channel"):
        prepare_latents(att_faces, str(tiny_vae_dir), tmp_path / "c", _cfg("data.channels=1"), device="cpu")
    with pytest.raises(UserError, match="folder not found"):
        load_latent_cache(tmp_path / "nothing")
    with pytest.raises(UserError, match="not a latent cache"):
        load_latent_cache(foreign)


def test_prepare_cli(att_faces, tiny_vae_dir, tmp_path, capsys):
    out = tmp_path / "cache"
    args = ["prepare", "--data", str(att_faces), "--vae", str(tiny_vae_dir), "--out", str(out), "--device", "cpu"]
    assert main([*args, "data.image_size=16", "--dry-run"]) == 0
    assert "image_size: 16" in capsys.readouterr().out and not out.exists()
    assert main([*args, "data.image_size=16", "autoencoder.scaling_factor=auto"]) == 0
    text = capsys.readouterr().out
    assert "200 latents of shape (4, 8, 8)" in text and "20 classes" in text
    assert main([*args, "data.image_size=16", "autoencoder.scaling_factor=auto"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main([*args, "data.image_size=8"]) == 2
    err = capsys.readouterr().err
    assert "image_size" in err and "--overwrite" in err
    assert main([*args, "data.image_size=8", "--overwrite", "--no-pack"]) == 0
    assert load_latent_cache(out).latent_shape == (4, 4, 4) and not (out / "latents.npy").exists()


def test_prepare_skips_bad_files_of_synth_faces(tiny_vae_dir, tmp_path, capsys):
    from ldm.data.synth import SYNTH_CLASSES, make_synth_faces

    data = tmp_path / "faces"
    make_synth_faces(data, per_class=3, seed=0)
    (data / "sleepy" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "cache"
    argv = ["prepare", "--data", str(data), "--vae", str(tiny_vae_dir), "--out", str(out), "--device", "cpu"]
    assert main([*argv, "data.image_size=16", "--batch-size", "4"]) == 0
    text = capsys.readouterr().out
    assert "15 latents of shape (4, 8, 8) in 5 classes" in text and "sleepy/broken.png" in text
    assert "far from unit variance" in text  # the diffusers default 0.18215 does not fit this untrained VAE
    cache = load_latent_cache(out)
    assert cache.classes == list(SYNTH_CLASSES) and cache.manifest.skipped[0][0] == "sleepy/broken.png"
    assert cache.labels.tolist() == [k for k in range(5) for _ in range(3)]


def test_load_hand_written_manifest(tmp_path):
    """The original project's layout plus a minimal manifest (files as paths, or no files list) loads too."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for n in range(11):
            np.save(tmp_path / name / f"{n}.npy", rng.standard_normal((4, 2, 2)).astype(np.float32))
    manifest = {
        "format_version": 1,
        "classes": ["a", "b"],
        "num_images": 22,
        "latent_shape": [4, 2, 2],
        "scaling_factor": 0.5,
    }
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    c = load_latent_cache(tmp_path)
    assert c.latents.shape == (22, 4, 2, 2) and c.labels.tolist() == [0] * 11 + [1] * 11
    assert np.array_equal(c.latents[2].numpy(), np.load(tmp_path / "a" / "2.npy"))  # numeric order: 2 before 10
    manifest["files"] = [f"b/{n}.npy" for n in range(11)] + [f"a/{n}.npy" for n in range(11)]
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    assert load_latent_cache(tmp_path).labels.tolist() == [1] * 11 + [0] * 11
    manifest["num_images"] = 23
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="damaged"):
        load_latent_cache(tmp_path)


def test_prepare_from_a_train_vae_run_folder(tiny_vae_dir, tmp_path):
    from ldm.data.synth import make_synth_faces

    run = tmp_path / "runs" / "vae"
    shutil.copytree(tiny_vae_dir, run / "vae")  # the layout ldm train-vae writes
    make_synth_faces(tmp_path / "faces", per_class=2)
    m = prepare_latents(tmp_path / "faces", str(run), tmp_path / "cache", _cfg(), device="cpu", progress=False)
    assert m.autoencoder.source == str(run) and m.autoencoder.content_hash == hash_folder(tiny_vae_dir)
    assert load_latent_cache(tmp_path / "cache").latents.shape == (10, 4, 8, 8)


def test_changed_data_or_weights_under_the_same_names_are_detected(tiny_vae_dir, tmp_path):
    import os

    from ldm.data.synth import make_synth_faces

    data, vae, out = tmp_path / "faces", tmp_path / "vae", tmp_path / "cache"
    make_synth_faces(data, per_class=2)
    shutil.copytree(tiny_vae_dir, vae)
    prepare_latents(data, str(vae), out, _cfg(), device="cpu", progress=False)
    img = data / "smiling" / "0000.png"
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))  # edited image
    with pytest.raises(CacheMismatchError, match="data: files were added, removed or modified"):
        prepare_latents(data, str(vae), out, _cfg(), device="cpu", progress=False)
    prepare_latents(data, str(vae), out, _cfg(), device="cpu", progress=False, overwrite=True)
    weights = next(vae.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # retrained in place: same path, other content
    with pytest.raises(CacheMismatchError, match="autoencoder content hash"):
        prepare_latents(data, str(vae), out, _cfg(), device="cpu", progress=False)


def test_hflip_caches_the_latents_of_the_mirrored_images(att_faces, tiny_vae_dir, tmp_path):
    from ldm.data.folders import load_image
    from ldm.models.autoencoder import encode, load_autoencoder

    out = tmp_path / "cache"
    m = prepare_latents(att_faces, str(tiny_vae_dir), out, _cfg("data.hflip=true"), device="cpu", progress=False)
    cache = load_latent_cache(out)
    assert m.mirrored and cache.mirrored is not None and cache.mirrored.shape == cache.latents.shape
    # encoded from the mirrored image, not the latent flipped (the autoencoder is not mirror-equivariant)
    ae = load_autoencoder(str(tiny_vae_dir), device="cpu")
    first = att_faces / m.files[0]["image"]
    image = load_image(first, 16, 3)[None]
    expected = encode(ae, image.flip(-1)) * cache.scaling_factor
    torch.testing.assert_close(cache.mirrored[:1], expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(cache.mirrored[:1], cache.latents[:1].flip(-1), atol=1e-3)
    # the same folder without mirrored latents is another cache: refused, not silently mixed
    with pytest.raises(CacheMismatchError, match="mirrored"):
        prepare_latents(att_faces, str(tiny_vae_dir), out, _cfg(), device="cpu", progress=False)
    # a cache without them: load_latent_cache gives None, and training.hflip names the fix
    plain = tmp_path / "plain"
    prepare_latents(att_faces, str(tiny_vae_dir), plain, _cfg(), device="cpu", progress=False)
    assert load_latent_cache(plain).mirrored is None
    from ldm.training.trainer import Trainer

    with pytest.raises(UserError, match="data.hflip=true"):
        cfg = load_config(None, ["training.hflip=true", "training.max_steps=1", "unet.preset=tiny"])
        Trainer(cfg, plain, tmp_path / "run", progress=False, device="cpu").setup()
