"""The Training tab's recipe presets: the form filled from configs/, the numbers from benchmark records."""

from __future__ import annotations

import json

import ldm.app.recipes as recipes
from ldm.app.settings import TrainSettings


def test_a_recipe_fills_the_form_but_keeps_the_data_and_run_name():
    mine = TrainSettings(data_dir="data/my-faces", run_name="mine", latent_dir="data/latents/mine", preprocess="no")
    s = recipes.recipe_settings("faces", mine)
    assert (s.data_dir, s.run_name, s.latent_dir, s.preprocess) == ("data/my-faces", "mine", "data/latents/mine", "no")
    assert s.max_minutes == 15 and s.learning_rate == 1e-3 and "diffusion.prediction_type=v_prediction" in s.extra
    assert recipes.recipe_settings("original").preset == "seed"
    assert recipes.default_settings().values() == recipes.recipe_settings("demo").values()


def test_the_numbers_and_the_estimate_come_from_the_newest_record(tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "RECORDS", tmp_path)
    assert "No measurement recorded" in recipes.recipe_summary("demo")
    assert recipes.budget_estimate("demo", 5, 0) == ""
    curve = [{"step": s, "minutes": s / 200, "kid": 0.5 / s, "class_accuracy": min(1.0, s / 1000)} for s in (200, 600)]
    row = {"config": "configs/demo.yaml", "data": "synth-faces", "minutes": 3.0, "steps": 600,
           "steps_per_minute": 200.0, "eval_num_samples": 60, "curve": curve}  # fmt: skip
    for utc, accuracy in (("2026-12-01T00:00:00", 0.1), ("2026-12-04T00:00:00", None)):
        record = {"script": "bench_recipes", "utc": utc, "cpu": {"cores": 2, "kind": "avx2"},
                  "results": {"recipes": {"demo": row if accuracy is None else {**row, "steps": 1}}}}  # fmt: skip
        (tmp_path / f"bench_recipes-{utc[:10]}-avx2.json").write_text(json.dumps(record))
    summary = recipes.recipe_summary("demo")
    assert "3 min of training on a 2-core avx2 CPU -> 600 steps, class accuracy 0.60" in summary  # the newest
    estimate = recipes.budget_estimate("demo", 2, 0)  # 400 steps at 200/min: the point at step 200
    assert "about 400 steps" in estimate and "class accuracy about 0.20" in estimate and "step 200" in estimate
    assert "about 600 steps" in recipes.budget_estimate("demo", 10, 600)  # the step budget ends it first
    assert "longest measured" in recipes.budget_estimate("demo", 10, 0)
