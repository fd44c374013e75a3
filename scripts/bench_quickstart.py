"""The quickstart's recipe at a slow CPU's step count: class accuracy and KID of levers, each a row.

    python scripts/bench_quickstart.py --latents WS/data/latents/demo --real WS/data/synth-faces --workdir WS/runs \\
        --variant 'drop05 diffusion.label_dropout=0.05' --variant 'lr3e-3 training.learning_rate=3e-3'

``ldm quickstart`` gives the diffusion model 5 minutes; on a 2-core CPU without AVX-512 (float32 convolutions) that
is about 1236 steps. Each row trains ``configs/demo.yaml`` plus its overrides for exactly ``--steps`` float32 steps
on the same latent cache (a quickstart's, whose autoencoder had the AVX2 CPU's 1100 float32 steps: ``ldm quickstart
autoencoder.max_steps=1100 autoencoder.max_minutes=0 autoencoder.mixed_precision=fp32 ...``), so the rows are what
such a CPU would train, on any CPU; then ``ldm eval`` with ``--num-samples`` images (seed ``--seed``): KID, FID and the
classifier's class accuracy (+-0.01 at 500 images). A row whose run folder already holds a finished run, or an
``eval.json`` with the same sample count and seed, is not done again. The record (``scripts/bench_record.py``) keeps
every row; ``scripts/bench_tables.py`` makes the docs' table from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_record import describe_machine, write_record  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latents", required=True, help="the quickstart's latent cache")
    p.add_argument("--real", required=True, help="the images it was made from")
    p.add_argument("--workdir", required=True, help="folder of the rows' run folders")
    p.add_argument("--variant", action="append", default=[], metavar="'NAME key=value ...'")
    p.add_argument("--base-name", default="demo", help="the row of configs/demo.yaml as it is")
    p.add_argument("--steps", type=int, default=1236)
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--record-dir", default=str(ROOT / "docs" / "benchmarks"))
    args = p.parse_args(argv)

    import yaml

    from ldm.config import flatten, load_config, to_dict
    from ldm.evaluation.report import evaluate_run
    from ldm.run_folder import RunFolder
    from ldm.training.trainer import train

    cpu = describe_machine()
    print(f"CPU: {cpu['model']} ({cpu['kind']}; {cpu['cores']} cores)", flush=True)
    rows = {}
    for spec in [args.base_name, *args.variant]:
        name, *overrides = spec.split()
        run = Path(args.workdir) / name
        fixed = [f"training.max_steps={args.steps}", "training.max_minutes=0", "training.mixed_precision=no"]
        fixed.append("training.sample_minutes=0")
        status = RunFolder(run).read_status() or {}
        if not (status.get("state") == "finished" and status.get("step") == args.steps):
            cfg = load_config(ROOT / "configs" / "demo.yaml", [*fixed, *overrides])
            train(cfg, args.latents, run, progress=False)
        try:
            ev = json.loads(RunFolder(run).eval_path.read_text())
        except (OSError, ValueError):
            ev = {}
        settings = ev.get("settings") or {}
        if settings.get("num_samples") != args.num_samples or settings.get("seed") != args.seed:
            ev = evaluate_run(run, args.real, num_samples=args.num_samples, seed=args.seed, log=print)
        accuracy = ev["class_accuracy"]
        # what the run was really trained with, where it differs from configs/demo.yaml + overrides now (a run
        # trained before the config changed is reused as it is, and says so)
        meant = flatten(to_dict(load_config(ROOT / "configs" / "demo.yaml", [*fixed, *overrides])))
        trained = flatten(yaml.safe_load(RunFolder(run).config_path.read_text()))
        differs = [f"{k}={trained[k]}" for k in sorted(trained) if k in meant and trained[k] != meant[k]]
        rows[name] = {
            "overrides": overrides,
            "trained_with_other": [d for d in differs if not d.startswith(("autoencoder.", "data."))],
            "steps": args.steps,
            "kid": ev["kid"],
            "kid_std": ev["kid_std"],
            "fid": ev["fid"],
            "class_accuracy": accuracy["overall"],
            "per_class": accuracy["per_class"],
        }
        said = f"class accuracy {accuracy['overall']:.3f}, KID {ev['kid']:.4f}, FID {ev['fid']:.1f}"
        print(f"{name}: {said}", flush=True)
    results = {"steps": args.steps, "num_samples": args.num_samples, "seed": args.seed, "rows": rows}
    print(f"record: {write_record('bench_quickstart', results, args.record_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
