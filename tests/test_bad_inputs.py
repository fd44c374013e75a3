"""The catalogue of bad inputs a real user produces, through the CLI: each is used correctly or refused with a
message saying what is wrong and what is accepted, exit code 2, no traceback, nothing half-written.

Tiny everything (the tiny latent cache and pipeline of the other tests); one thread.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from fakes import write_tiny_latent_cache, write_tiny_pipeline
from PIL import Image

from ldm.cli import main as ldm_main
from ldm.errors import UserError
from ldm.run_folder import RunFolder

torch.set_num_threads(1)

CLASSES = ["angry", "happy", "sad"]
TINY_TRAIN = [
    "unet.preset=tiny",
    "training.batch_size=4",
    "training.warmup_steps=1",
    "training.log_every=1",
    "training.sample_every=0",
    "training.channels_last=false",
    "diffusion.num_train_timesteps=100",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    return write_tiny_latent_cache(root / "vae", root / "latents", CLASSES)


@pytest.fixture(scope="module")
def run(tiny_vae_dir: Path, tmp_path_factory) -> Path:
    return write_tiny_pipeline(tmp_path_factory.mktemp("run"), tiny_vae_dir, CLASSES)


def _refused(argv: list[str], capsys, *expected: str) -> str:
    """Run the CLI; it must exit 2 with one clear line naming each of ``expected``, and no traceback."""
    code = ldm_main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    assert "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)
    return err


def _images(folder: Path, n: int = 2, colour=(200, 30, 30)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), colour).save(folder / f"{i}.png")


# -- sampling -------------------------------------------------------------------------------------------------------

SAMPLE_CASES = {
    "no CUDA GPU": (["--device", "cuda"], "no CUDA GPU"),
    "a device typo": (["--device", "foo"], "'foo' is not a device", "accepted: auto, cpu, cuda, cuda:N, mps"),
    "more steps than trained": (["--num-inference-steps", "5000"], "from 1 to 1000", "got 5000"),
    "zero steps": (["--num-inference-steps", "0"], "from 1 to 1000"),
    "a seed beyond int64": (["--seed", str(10**20)], "whole number from 0 to"),
    "a negative seed": (["--seed", "-1"], "whole number from 0 to"),
    "guidance nan": (["--guidance-scale", "nan"], "guidance_scale must be a number >= 0"),
    "guidance inf": (["--guidance-scale", "inf"], "guidance_scale must be a number >= 0"),
    "negative guidance": (["--guidance-scale", "-1"], "guidance_scale must be a number >= 0"),
    "zero images": (["-n", "0"], "num_images must be >= 1"),
    "unknown class": (["--class", "angyr"], "unknown class 'angyr'", "closest: angry"),
}


@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_sample_refuses_bad_arguments_before_writing(run, tmp_path, capsys, case):
    extra, *expected = SAMPLE_CASES[case]
    out = tmp_path / "out"
    argv = ["sample", "--run", str(run), "--class", "happy", "-n", "1", "--num-inference-steps", "2"]
    argv += ["--out", str(out)]
    _refused(argv + extra, capsys, *expected)
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_sample_refuses_an_output_that_is_a_file_or_not_writable_before_generating(run, tmp_path, capsys, monkeypatch):
    afile = tmp_path / "taken"
    afile.write_text("not a folder")
    argv = ["sample", "--run", str(run), "--class", "happy", "-n", "1", "--num-inference-steps", "2"]
    _refused(argv + ["--out", str(afile)], capsys, f"--out {afile} is a file")
    _refused(argv + ["--out", str(afile / "sub")], capsys, "is a file, so the folder cannot be created")

    from ldm.diffusion import pipeline

    calls = []
    monkeypatch.setattr(pipeline.ClassConditionalLatentDiffusionPipeline, "__call__", lambda *a, **k: calls.append(1))
    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    # a read-only mount (chmod cannot show it to the root user the tests may run as)
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    _refused(argv + ["--out", str(locked / "new")], capsys, "this user cannot write there", f"parent {locked}")
    assert calls == []  # refused before any image was generated


# -- training -------------------------------------------------------------------------------------------------------

TRAIN_CASES = {
    "no CUDA GPU": (["--device", "cuda"], "no CUDA GPU"),
    "a device typo": (["--device", "foo"], "'foo' is not a device"),
    "learning rate nan": (["training.learning_rate=nan"], "training.learning_rate", "a finite number"),
    "time budget nan": (["training.max_minutes=nan"], "training.max_minutes", "a finite number"),
    "label dropout above 1": (["diffusion.label_dropout=1.5"], "diffusion.label_dropout must be in [0, 1)"),
    "learning rate zero": (["training.learning_rate=0"], "training.learning_rate must be > 0"),
    "batch size zero": (["training.batch_size=0"], "training.batch_size"),
    "batch size text": (["training.batch_size=many"], "training.batch_size", "accepted: int"),
    "an unknown key": (["training.learnig_rate=1e-3"], "unknown config key 'training.learnig_rate'"),
    "negative steps": (["--max-steps", "-5"], "training.max_steps must be >= 0"),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_refuses_bad_settings_before_writing(cache, tmp_path, capsys, case):
    extra, *expected = TRAIN_CASES[case]
    out = tmp_path / "run"
    flags = ["--latents", str(cache), "--out", str(out), "--max-steps", "2", "--no-progress"]
    overrides = [a for a in extra if "=" in a and not a.startswith("--")]
    flags += [a for a in extra if a not in overrides]
    if "--device" not in flags:
        flags += ["--device", "cpu"]
    _refused(["train", *flags, *TINY_TRAIN, *overrides], capsys, *expected)
    assert not RunFolder(out).checkpoints()


def test_train_refuses_an_output_that_is_a_file(cache, tmp_path, capsys):
    afile = tmp_path / "run"
    afile.write_text("x")
    argv = ["train", "--latents", str(cache), "--out", str(afile), "--max-steps", "1", "--device", "cpu", *TINY_TRAIN]
    _refused(argv, capsys, "is a file")


def test_resume_falls_back_from_a_damaged_checkpoint_and_refuses_another_autoencoders_latents(cache, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--latents", str(cache), "--out", str(run), "--device", "cpu", "--no-progress"]
    assert ldm_main(base + ["--max-steps", "4", *TINY_TRAIN, "training.checkpoint_every=2"]) == 0
    newest = RunFolder(run).latest_checkpoint()
    assert newest.name == "step-000004"
    weights = newest / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated on disk
    with pytest.raises(UserError, match="the checkpoint is damaged: unet/diffusion_pytorch_model.safetensors has"):
        RunFolder(run).resolve_resume(newest)  # named explicitly: refused, never loaded
    capsys.readouterr()

    # another autoencoder's latents: refused (the checkpoint would meet a decoder it never saw)
    other = tmp_path / "other"
    shutil.copytree(cache, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["autoencoder"]["content_hash"] = "another-autoencoder"
    (other / "manifest.json").write_text(json.dumps(manifest))
    resume = ["train", "--out", str(run), "--resume", "latest", "--device", "cpu", "--no-progress"]
    _refused(resume + ["--latents", str(other), "training.max_steps=6"], capsys, "another autoencoder")

    # --resume latest: the damaged newest checkpoint is skipped, with a word, for the intact one before it
    assert ldm_main(resume + ["training.max_steps=6"]) == 0  # the run's own budget, raised (not a continuation)
    err = capsys.readouterr().err
    assert "step-000004 is damaged" in err and "bytes" in err
    assert "(step 2)" in (run / "train.log").read_text()
    assert [m["step"] for m in RunFolder(run).read_metrics() if "loss" in m] == [1, 2, 3, 4, 5, 6]


# -- data folders ---------------------------------------------------------------------------------------------------


def test_class_names_that_differ_only_in_case_or_spacing_are_refused_naming_them(tmp_path, capsys):
    data = tmp_path / "data"
    for name in ("Alice", "alice", "a b", "a-b", "bob"):
        _images(data / name)
    err = _refused(["data", "inspect", str(data)], capsys, "differ only in case, spacing or punctuation")
    assert "'Alice' / 'alice'" in err and "'a b' / 'a-b'" in err


def test_symlinks_loops_and_links_into_other_classes_are_listed_once(tmp_path):
    from ldm.data.folders import scan_image_folder

    data = tmp_path / "data"
    _images(data / "a", 2)
    _images(data / "b", 3, colour=(0, 200, 0))
    (data / "a" / "loop").symlink_to(data / "a")  # a loop inside a class
    (data / "a" / "up").symlink_to(data)  # a link to the data folder: every class again
    (data / "b" / "alias.png").symlink_to(data / "b" / "0.png")  # the same file twice
    outside = tmp_path / "elsewhere"
    _images(outside, 1, colour=(0, 0, 200))
    (data / "b" / "more").symlink_to(outside)  # photos kept elsewhere: followed
    scan = scan_image_folder(data)
    assert scan.counts() == {"a": 2, "b": 4}
    reasons = {p.name: why for p, why in scan.skipped}
    assert "loop" in reasons["loop"] and "another part of the data folder" in reasons["up"]
    assert "the same file as" in reasons["alias.png"]


def test_train_vae_refuses_to_overwrite_a_trained_autoencoder_and_writes_valid_json(tmp_path, capsys):
    data = tmp_path / "data"
    _images(data / "one", 1)  # a class of one image: nothing held out
    _images(data / "two", 1, colour=(0, 0, 200))
    (data / "two" / "broken.png").write_text("not an image")
    out = tmp_path / "vae"
    argv = ["train-vae", "--data", str(data), "--out", str(out), "--no-progress", "--max-steps", "2"]
    argv += ["data.image_size=16", "autoencoder.block_out_channels=[8,16]", "autoencoder.norm_num_groups=8"]
    argv += ["autoencoder.mixed_precision=fp32", "autoencoder.device=cpu", "autoencoder.checkpoint_every=0"]
    assert ldm_main(argv) == 0
    captured = capsys.readouterr()
    assert "no held-out images to measure" in captured.out and "nan" not in captured.out
    assert "broken.png" in (out / "train.log").read_text()  # the skipped file is named
    eval_text = (out / "eval.json").read_text()
    json.loads(eval_text, parse_constant=lambda c: pytest.fail(f"eval.json holds {c}, which is not JSON"))
    # the folder holds a trained autoencoder: a second run there is refused unless it continues
    shutil.rmtree(out / "checkpoints")
    _refused(argv, capsys, "already holds a trained autoencoder")
    assert RunFolder(out).has_vae


def test_prepare_refuses_a_device_this_machine_lacks(tmp_path, tiny_vae_dir, capsys):
    data = tmp_path / "data"
    _images(data / "x")
    _refused(["prepare", "--data", str(data), "--vae", str(tiny_vae_dir), "--out", str(tmp_path / "c"),
              "--device", "cuda", "data.image_size=16"], capsys, "no CUDA GPU")  # fmt: skip
    assert not (tmp_path / "c").exists()


def test_a_folder_of_everything_users_have_prepares_and_samples_by_name(tmp_path, tiny_vae_dir, capsys):
    """Unicode, spaces, dots and a leading dash in class names; one image in a class; 1x1 and 8000x8000 images;
    CMYK, 16-bit, palette and animated images (used); zero bytes, a text file named .png and a truncated file
    (skipped, each with its reason); then a few training steps and sampling a unicode class by name."""
    import numpy as np

    data = tmp_path / "data"
    for name in ("José", "a b", "v1.2", "-dash", "日本"):
        _images(data / name, 2, colour=(10 * len(name), 90, 160))
    Image.new("RGB", (1, 1), (255, 0, 0)).save(data / "José" / "tiny.png")
    Image.new("RGB", (8000, 8000), (0, 0, 255)).save(data / "a b" / "huge.png")
    Image.new("CMYK", (20, 20), (0, 120, 120, 0)).save(data / "v1.2" / "cmyk.jpg")
    Image.fromarray((np.arange(256).reshape(16, 16) * 250).astype(np.uint16)).save(data / "v1.2" / "deep.png")
    Image.new("RGB", (16, 16), (0, 200, 0)).convert("P").save(data / "-dash" / "palette.png")
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(data / "日本" / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    (data / "日本" / "zero.png").write_bytes(b"")
    (data / "日本" / "notes.png").write_text("a text file named .png")
    good = (data / "José" / "0.png").read_bytes()
    (data / "José" / "cut.png").write_bytes(good[: len(good) // 2])
    _images(data / "solo", 1)  # a class of one image

    cache = tmp_path / "latents"
    argv = ["prepare", "--data", str(data), "--vae", str(tiny_vae_dir), "--out", str(cache), "--device", "cpu"]
    assert ldm_main([*argv, "data.image_size=16"]) == 0, capsys.readouterr().err
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["counts"] == {"-dash": 3, "a b": 3, "solo": 1, "v1.2": 4, "José": 3, "日本": 3}
    skipped = {Path(p).name: why for p, why in manifest["skipped"]}
    assert set(skipped) == {"zero.png", "notes.png", "cut.png"}
    assert "not an image" in skipped["notes.png"] and "truncated" in skipped["cut.png"]

    run = tmp_path / "run"
    train = ["train", "--latents", str(cache), "--out", str(run), "--max-steps", "2", "--device", "cpu"]
    assert ldm_main([*train, "--no-progress", *TINY_TRAIN, "training.checkpoint_every=2"]) == 0
    out = tmp_path / "samples"
    sample = ["sample", "--run", str(run), "--class", "日本", "--class=-dash", "--class", "A B", "-n", "1"]
    assert ldm_main([*sample, "--num-inference-steps", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*-seed0.png")) == ["a-b-seed0.png", "dash-seed0.png", "日本-seed0.png"]


def test_hundreds_of_classes_and_runs_without_a_checkpoint(tmp_path, capsys):
    data = tmp_path / "data"
    for k in range(300):
        _images(data / f"person-{k:03d}", 1, colour=(k % 256, 0, 0))
    assert ldm_main(["data", "inspect", str(data)]) == 0
    assert "300 classes, 300 images" in capsys.readouterr().out

    empty_run = tmp_path / "runs" / "new"
    empty_run.mkdir(parents=True)
    (empty_run / "config.yaml").write_text("training:\n  max_steps: 3\n")
    _refused(["sample", "--run", str(empty_run), "--class", "x", "--out", str(tmp_path / "s")], capsys, str(empty_run))
    _refused(["train", "--out", str(empty_run), "--resume", "latest", "--device", "cpu"], capsys,
             "no complete checkpoint")  # fmt: skip


def test_an_empty_folder_and_a_class_without_images_are_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _refused(["data", "inspect", str(tmp_path / "empty")], capsys, "no class subfolders")
    _images(tmp_path / "data" / "good")
    (tmp_path / "data" / "nothing").mkdir()
    _refused(["data", "inspect", str(tmp_path / "data")], capsys, "nothing has no readable image")


def test_a_full_disk_during_a_checkpoint_is_a_clear_error_and_keeps_the_last_good_one(cache, tmp_path, capsys,
                                                                                    monkeypatch):  # fmt: skip
    import errno

    run = tmp_path / "run"
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "step-000004" in str(f):  # the second checkpoint: the disk is full by then
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    argv = [
        "train",
        "--latents",
        str(cache),
        "--out",
        str(run),
        "--max-steps",
        "6",
        "--device",
        "cpu",
        "--no-progress",
    ]
    full = "could not write checkpoint step-000004 (No space left on device)"
    _refused([*argv, *TINY_TRAIN, "training.checkpoint_every=2"], capsys, full, "the newest good one is step-000002")
    assert [c.name for c in RunFolder(run).checkpoints()] == ["step-000002"]
    assert RunFolder.checkpoint_damage(RunFolder(run).checkpoints()[0]) is None
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the half-written folder is gone
    assert RunFolder(run).read_status()["state"] == "failed"
