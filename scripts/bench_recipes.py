"""Recipe curves: what each of the repository's recipes reaches after how many steps and minutes, for the app.

    python scripts/bench_recipes.py                                  # demo and faces, their full budgets
    python scripts/bench_recipes.py --recipes demo --scale 0.05 --record-dir /tmp     # smoke run

Each recipe trains as a user would run it: its own data, its own config, its own budget, on all cores.

``demo``: ``configs/demo.yaml`` on the synthetic faces of ``ldm quickstart`` (3 min autoencoder, 5 min diffusion).
``faces``: ``configs/faces.yaml`` on ``att-faces-20`` at 64x64 (5 min autoencoder, 15 min diffusion).

During diffusion training the trainer's quick evaluation (``training.eval_every``: KID of ``--eval-samples``
generated images against the real ones, and the share a classifier trained on the real images puts in the right
class) runs every ``--eval-every`` steps and at the end; its time is not counted in the budget. The record
(``scripts/bench_record.py``) keeps per recipe the steps, the training minutes, steps per minute and the curve
``[{step, minutes, kid, class_accuracy}]``: the Training tab's recipe presets read it (``ldm.app.recipes``) to say
what a budget gives, and ``scripts/bench_tables.py`` builds the docs' table from it. Small samples (60 images)
make each point noisy (class accuracy +-0.05); the curve's shape is what it is for.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_record import describe_machine, write_record  # noqa: E402

RECIPES = {
    # name: (config, dataset, eval every N steps)
    "demo": ("configs/demo.yaml", "synth-faces", 200),
    "faces": ("configs/faces.yaml", str(ROOT.parent / "shared" / "datasets" / "att-faces-20"), 400),
}


def run_recipe(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from ldm.config import load_config
    from ldm.data.latents import prepare_latents
    from ldm.data.synth import make_synth_faces
    from ldm.run_folder import RunFolder
    from ldm.training.autoencoder import train_vae
    from ldm.training.trainer import train

    config, data, eval_every = RECIPES[name]
    work = Path(args.workdir) / name
    if data == "synth-faces":
        data = work / "synth-faces"
        if not data.is_dir():
            make_synth_faces(data, per_class=200, seed=0)
    cfg = load_config(ROOT / config, [])
    vae_minutes = cfg.autoencoder.max_minutes * args.scale
    minutes = cfg.training.max_minutes * args.scale
    cfg = load_config(
        ROOT / config,
        [
            f"autoencoder.max_minutes={vae_minutes}",
            f"training.max_minutes={minutes}",
            f"training.eval_every={max(1, int(eval_every * args.scale))}",
            f"training.eval_num_samples={args.eval_samples}",
            "training.sample_every=0",
            "training.sample_minutes=0",
        ],
    )
    vae = work / "vae"
    if not RunFolder(vae).has_vae:
        train_vae(cfg, data, vae, progress=False)
    cache = work / "latents"
    prepare_latents(data, str(vae), cache, cfg, progress=False)
    run = work / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    result = train(cfg, cache, run, progress=False)
    curve = [
        {
            "step": r["step"],
            "minutes": round(r.get("elapsed", 0.0) / 60, 2),
            "kid": r["eval_kid"],
            "class_accuracy": r["eval_class_accuracy"],
        }
        for r in RunFolder(run).read_metrics()
        if "eval_kid" in r
    ]
    train_minutes = result.elapsed_seconds / 60
    row = {
        "config": config,
        "data": Path(data).name,
        "autoencoder_minutes": vae_minutes,
        "minutes": round(train_minutes, 2),
        "steps": result.step,
        "steps_per_minute": round(result.step / max(train_minutes, 1e-9), 1),
        "precision": (RunFolder(run).read_inputs() or {}).get("mixed_precision"),
        "eval_num_samples": args.eval_samples,
        "curve": curve,
    }
    print(f"{name}: {result.step} steps in {train_minutes:.1f} min; " + ", ".join(
        f"step {p['step']}: KID {p['kid']:.3f} acc {p['class_accuracy']:.2f}" for p in curve
    ), flush=True)  # fmt: skip
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="demo,faces", help="comma list of: " + ", ".join(RECIPES))
    p.add_argument("--workdir", default="runs/bench-recipes")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every budget (a smoke run: 0.05)")
    p.add_argument("--eval-samples", type=int, default=60, help="images per quick evaluation")
    p.add_argument("--record-dir", default=str(ROOT / "docs" / "benchmarks"))
    args = p.parse_args(argv)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        p.error(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    cpu = describe_machine()
    print(f"CPU: {cpu['model']} ({cpu['kind']}; {cpu['cores']} cores, torch {cpu['torch_capability']})", flush=True)
    rows = {name: run_recipe(name, args) for name in names}
    path = write_record("bench_recipes", {"scale": args.scale, "recipes": rows}, args.record_dir)
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
