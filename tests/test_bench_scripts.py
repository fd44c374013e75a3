"""scripts/bench_quality.py's baseline is the original as it ran; scripts/bench_record.py writes a run's record;
scripts/bench_tables.py builds the tables of docs/benchmarks.md from records."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # a shared 2-core machine: one thread avoids oversubscription

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))  # the scripts import bench_record as a sibling
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quality():
    return _load("bench_quality")


@pytest.fixture(scope="module")
def record():
    return _load("bench_record")


@pytest.fixture(scope="module")
def tables():
    return _load("bench_tables")


# ---------------------------------------------------------------------------------------------------------------------
# the original as it ran


def test_original_unet_is_the_seed_with_a_timestep_class_embedding(quality):
    from diffusers.models.embeddings import TimestepEmbedding

    torch.manual_seed(0)
    unet = quality.build_original_unet((4, 8, 8)).eval()
    assert unet.config.class_embed_type == "timestep"
    assert isinstance(unet.class_embedding, TimestepEmbedding)
    assert unet.config.block_out_channels == (32, 64, 128, 256) and unet.config.layers_per_block == 2
    assert unet.config.down_block_types == ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    assert unet.config.up_block_types == ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    assert unet.config.num_class_embeds is None

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 700])
    labels = torch.tensor([0, 3])
    with torch.no_grad():
        out = unet(x, t, labels).sample  # the original's call: (x_t, t, class_labels) positionally
        other_t = unet(x, t + 100, labels).sample
        other_label = unet(x, t, labels + 1).sample
        again = unet(x, t, class_labels=labels).sample
    assert out.shape == x.shape
    torch.testing.assert_close(out, again)
    assert (out - other_t).abs().max() > 1e-4  # t reaches the time embedding
    assert (out - other_label).abs().max() > 1e-4  # so does the label, through its own embedding


def test_original_loss_is_l1_as_it_ran_and_mse_as_meant(quality):
    assert quality.ORIGINAL_ROWS["original"][0] == "original as it ran (L1)"
    assert isinstance(quality.original_loss(quality.ORIGINAL_ROWS["original"][1]), torch.nn.L1Loss)
    assert isinstance(quality.original_loss("MAE"), torch.nn.L1Loss)
    assert isinstance(quality.original_loss(quality.ORIGINAL_ROWS["original-mse"][1]), torch.nn.MSELoss)
    assert quality.BASELINE == "original"
    assert quality.ORIGINAL_SCHEDULER == dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02)
    assert (quality.ORIGINAL_BATCH_SIZE, quality.ORIGINAL_LEARNING_RATE) == (20, 1e-3)


def test_original_training_loop_takes_steps_with_l1(quality, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(quality, "build_original_unet", lambda shape: _tiny_timestep_unet(shape))
    g = torch.Generator().manual_seed(0)
    cache = SimpleNamespace(
        latent_shape=[4, 8, 8], latents=torch.randn(40, 4, 8, 8, generator=g), labels=torch.arange(40) % 4
    )
    unet, stats = quality.train_original(cache, minutes=0.02, loss_fn="MSE", seed=0, device="cpu")
    assert stats["loss"] == "L1Loss" and stats["steps"] >= 1 and stats["images_seen"] == 20 * stats["steps"]
    assert not unet.training and stats["ended"] >= stats["started"]


def _tiny_timestep_unet(shape):
    from diffusers import UNet2DModel

    from ldm.models.unet import PRESETS

    c, h, _ = shape
    torch.manual_seed(0)
    return UNet2DModel(**PRESETS["tiny"], sample_size=h, in_channels=c, out_channels=c, class_embed_type="timestep")


# ---------------------------------------------------------------------------------------------------------------------
# records and tables


def test_write_record_has_the_required_keys(record, tmp_path):
    argv = ["scripts/bench_x.py", "--minutes", "1"]
    path = record.write_record("bench_x", {"kid": 0.1}, tmp_path, argv=argv)
    rec = json.loads(path.read_text())
    assert set(rec) >= {"script", "utc", "command", "cpu", "versions", "git", "results"}
    assert rec["script"] == "bench_x" and rec["results"] == {"kid": 0.1}
    assert rec["command"] == "python scripts/bench_x.py --minutes 1"
    assert set(rec["cpu"]) >= {"model", "kind", "flags", "torch_capability", "cores"}
    assert rec["cpu"]["model"] and isinstance(rec["cpu"]["flags"], list)
    assert set(rec["versions"]) >= {"python", "torch", "diffusers"} and rec["versions"]["torch"]
    assert set(rec["git"]) == {"commit", "dirty"} and len(rec["git"]["commit"]) == 40  # the tests run in a checkout
    assert path.name == f"bench_x-{rec['utc'][:10]}-{rec['cpu']['kind']}.json"
    second = record.write_record("bench_x", {"kid": 0.2}, tmp_path, argv=argv)
    assert second != path and second.name.endswith("-2.json") and json.loads(path.read_text())["results"]["kid"] == 0.1


def test_cpu_kind(record):
    assert record.cpu_kind(["avx2", "avx512f", "avx512_bf16", "amx_bf16"]) == "amx"
    assert record.cpu_kind(["avx2", "avx512f", "avx512_bf16"]) == "avx512-bf16"
    assert record.cpu_kind(["avx2", "avx512f"]) == "avx512"
    assert record.cpu_kind(["sse4_2", "avx2"]) == "avx2"
    assert record.cpu_kind([], "aarch64") == "aarch64"


def _quality_record(utc: str, commit: str, kid: float) -> dict:
    row = {
        "label": "original as it ran (L1)",
        "kid": kid,
        "kid_std": 0.002,
        "fid": 203.04,
        "class_accuracy": 0.333,
        "training": {"steps": 1429},
        "sampling": {"scheduler": "ddpm", "steps": 1000, "guidance_scale": None},
    }
    ours = {**row, "label": "ours (faces.yaml)", "kid": 0.108, "fid": 116.0, "class_accuracy": 0.97,
            "training": {"steps": 2001},
            "sampling": {"scheduler": "dpm++", "steps": 25, "guidance_scale": 3.0}}  # fmt: skip
    return {
        "script": "bench_quality",
        "utc": utc,
        "command": "python scripts/bench_quality.py",
        "cpu": {"kind": "avx2", "model": "AMD EPYC"},
        "git": {"commit": commit, "dirty": False},
        "results": {
            "settings": {
                "minutes": 15.0,
                "threads": 1,
                "num_samples": 60,
                "data": "/x/att-faces-20",
                "image_size": 64,
                "vae_minutes": 5.0,
                "parallel": 2,
            },  # fmt: skip
            "rows": {"original": row, "ours": ours},
            "ratios": {"ours": {"kid_original_over_row": kid / 0.108}},
        },
    }


def test_tables_are_built_from_records_between_markers(tables, tmp_path):
    records = tmp_path / "benchmarks"
    records.mkdir()
    # Written newest first, named so that file order and time order differ: the table goes by time.
    (records / "bench_quality-2026-12-03-avx2.json").write_text(
        json.dumps(_quality_record("2026-12-03T10:00:00+00:00", "b" * 40, 0.184))
    )
    (records / "bench_quality-2026-12-02-avx2.json").write_text(
        json.dumps(_quality_record("2026-12-02T09:00:00+00:00", "a" * 40, 0.2))
    )
    doc = tmp_path / "benchmarks.md"
    before = "# Benchmarks\n\nHand-typed | 0.386 |\n\n<!-- table:bench_quality -->\nstale\n<!-- /table -->\n\nAfter.\n"
    doc.write_text(before)
    assert tables.main(["--doc", str(doc), "--records", str(records), "--check"]) == 1
    assert tables.main(["--doc", str(doc), "--records", str(records)]) == 0
    head = (
        "| recipe | KID | FID | class accuracy | train steps | sampling | samples | budget | CPU | date | commit "
        "| record |"
    )
    budget = "60 | 15 min x 1 thread(s)"

    def rows(day: str, commit: str, kid: str) -> list[str]:
        link = f"[bench_quality-{day}-avx2.json](benchmarks/bench_quality-{day}-avx2.json)"
        return [
            f"| original as it ran (L1) | {kid} ± 0.0020 | 203.0 | 0.333 | 1429 | ddpm 1000, no guidance | {budget} | "
            f"avx2 | {day} | {commit} | {link} |",
            f"| ours (faces.yaml) | 0.1080 ± 0.0020 | 116.0 | 0.970 | 2001 | dpm++ 25, guidance 3 | {budget} | "
            f"avx2 | {day} | {commit} | {link} |",
        ]

    older, newer = rows("2026-12-02", "aaaaaaa", "0.2000"), rows("2026-12-03", "bbbbbbb", "0.1840")
    table = [head, "|" + "---|" * 12, *older, *newer]
    expected = "# Benchmarks\n\nHand-typed | 0.386 |\n\n<!-- table:bench_quality -->\n" + "\n".join(table)
    assert doc.read_text() == expected + "\n<!-- /table -->\n\nAfter.\n"
    assert tables.main(["--doc", str(doc), "--records", str(records), "--check"]) == 0


def test_the_readme_results_come_from_the_newest_record_with_the_original(tables, tmp_path):
    records = tmp_path / "docs" / "benchmarks"
    records.mkdir(parents=True)
    for day, kid in (("2026-12-02", 0.2), ("2026-12-03", 0.184)):
        rec = _quality_record(f"{day}T10:00:00+00:00", "a" * 40, kid)
        (records / f"bench_quality-{day}-avx2.json").write_text(json.dumps(rec))
    lever_run = _quality_record("2026-12-04T10:00:00+00:00", "c" * 40, 0.3)  # levers only: no original row
    del lever_run["results"]["rows"]["original"]
    (records / "bench_quality-2026-12-04-avx2.json").write_text(json.dumps(lever_run))
    readme = tmp_path / "README.md"
    readme.write_text("## Results\n\n<!-- table:bench_quality-summary -->\n<!-- /table -->\n")
    assert tables.main(["--doc", str(readme), "--records", str(records)]) == 0
    text = readme.read_text()
    assert "| original as it ran (L1) | 0.184 | 203 | 0.33 | 1x | 1429 | ddpm 1000, no guidance | 60 |" in text
    assert "| ours (faces.yaml) | 0.108 | 116 | 0.97 | 1.7x better | 2001 | dpm++ 25, guidance 3 | 60 |" in text
    assert "0.200" not in text and "2026-12-04" not in text  # the older full record and the lever run
    assert "[bench_quality-2026-12-03-avx2.json](docs/benchmarks/bench_quality-2026-12-03-avx2.json)" in text
    assert tables.main(["--doc", str(readme), "--records", str(records), "--check"]) == 0


def test_a_table_without_records_says_so(tables, tmp_path):
    text = "a\n<!-- table:bench_train -->\n<!-- /table -->\nb\n"
    out = tables.update_tables(text, tmp_path)
    assert out == "a\n<!-- table:bench_train -->\n_No record of `scripts/bench_train.py` yet._\n<!-- /table -->\nb\n"


def test_the_docs_tables_match_the_committed_records(tables):
    root = SCRIPTS.parent
    assert tables.main(["--doc", str(root / "docs" / "benchmarks.md"), "--doc", str(root / "README.md"),
                        "--records", str(root / "docs" / "benchmarks"), "--check"]) == 0  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# bench_quality's lever rows, bench_sample


def test_a_variant_is_our_recipe_with_overrides_after_the_shared_stages(quality):
    import argparse

    assert quality.parse_variant("ema995 training.ema_decay=0.995") == ("ours-ema995", ["training.ema_decay=0.995"])
    for bad in ("ema995", "training.ema_decay=0.995", "x data.image_size=32"):
        with pytest.raises(argparse.ArgumentTypeError):
            quality.parse_variant(bad)
    # an autoencoder lever: the row gets an autoencoder and latent cache of its own
    name, overrides = quality.parse_variant("down8 autoencoder.down_factor=8 unet.preset=tiny")
    assert quality.autoencoder_overrides(overrides) == ["autoencoder.down_factor=8"]
    assert quality.autoencoder_overrides(["training.ema_decay=0.995"]) == []
    args = argparse.Namespace(config=str(SCRIPTS.parent / "configs" / "faces.yaml"), image_size=64, minutes=15.0,
                              seed=0)  # fmt: skip
    cfg = quality.ours_config(args, ["training.batch_size=16", "training.learning_rate=2e-4"])
    assert (cfg.training.batch_size, cfg.training.learning_rate, cfg.training.max_minutes) == (16, 2e-4, 15.0)
    plain = quality.ours_config(args)
    assert (plain.training.batch_size, plain.training.learning_rate) != (16, 2e-4)  # faces.yaml's own


@pytest.fixture(scope="module")
def sample():
    return _load("bench_sample")


def test_bench_sample_times_both_samplers_at_equal_work_and_writes_a_record(sample, tmp_path, capsys):
    out = tmp_path / "numbers.json"
    args = ["--preset", "tiny", "--images", "2", "--repeats", "2", "--threads", "1", "--json", str(out),
            "--record-dir", str(tmp_path)]  # fmt: skip
    assert sample.main(args) == 0
    numbers = json.loads(out.read_text())
    assert [len(v) for v in numbers["repeats"].values()] == [2, 2]
    assert numbers["ours_sampler"] == "dpm++ 25"
    assert "batch 2, guidance 3" in numbers["work"]
    assert numbers["speedup_cpu"] > 5  # 1000 DDPM steps against 25, the rest of the work equal
    assert len(list(tmp_path.glob("bench_sample-*.json"))) == 1
    assert "speed-up:" in capsys.readouterr().out


def test_bench_sample_quality_needs_a_run(sample, tmp_path):
    with pytest.raises(SystemExit) as e:
        sample.main(["--real", str(tmp_path)])
    assert e.value.code == 2
