"""``ldm quickstart``: the whole demo, end to end, each step skipped when its output is already there.

synth-faces dataset -> autoencoder (train-vae) -> latent cache (prepare) -> diffusion training -> sample grid
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ldm.run_folder import RunFolder

HELP = "run the demo end to end: synthetic faces, autoencoder, latent cache, training, a final sample grid"

_REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", default=".", help="folder holding data/ and runs/ (default: current folder)")
    p.add_argument(
        "--config",
        default=str(_REPO_CONFIG) if _REPO_CONFIG.is_file() else None,
        help="YAML config of the demo recipe (default: configs/demo.yaml)",
    )
    p.add_argument("--name", default="demo", help="run name: runs/NAME (default: %(default)s)")
    p.add_argument("--per-class", type=int, default=200, help="synthetic faces per class (default: %(default)s)")
    p.add_argument("--vae-minutes", type=float, default=None, help="autoencoder budget in minutes (default: config)")
    p.add_argument("--train-minutes", type=float, default=None, help="diffusion budget in minutes (default: config)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the plan, then exit")


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.monotonic()


def run(args: argparse.Namespace) -> int:
    from ldm.commands._common import dry_run, flag_overrides, resolve_config

    extra = flag_overrides("autoencoder", max_minutes=args.vae_minutes)
    extra += flag_overrides("training", max_minutes=args.train_minutes)
    cfg = resolve_config(args, extra)

    ws = Path(args.workspace).resolve()
    data_dir = ws / "data" / "synth-faces"
    vae_run = ws / "runs" / f"{args.name}-vae"
    cache = ws / "data" / "latents" / f"{args.name}"
    run_dir = ws / "runs" / args.name
    grid = run_dir / "final-samples" / "grid.png"
    if dry_run(args, cfg):
        print(f"# plan: {data_dir} -> {RunFolder(vae_run).vae_dir} -> {cache} -> {run_dir} -> {grid}")
        return 0

    t_all = time.monotonic()
    from ldm.utils import WORKSPACE_MARKER

    # a workspace: what it records about its own folders is relative to it, so it can be moved or copied (and it is
    # the folder the app opens)
    (ws / WORKSPACE_MARKER).mkdir(parents=True, exist_ok=True)

    # 1. dataset
    t = _step(f"1/5 synthetic faces -> {data_dir}")
    from ldm.data.synth import SYNTH_CLASSES, make_synth_faces

    marker = data_dir / ".complete.json"
    want = {"per_class": args.per_class, "seed": 0, "classes": list(SYNTH_CLASSES)}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        print("   already there, skipped")
    else:
        make_synth_faces(data_dir, per_class=args.per_class, seed=0)
        from ldm.utils import atomic_write_json

        atomic_write_json(marker, want)
        print(f"   {args.per_class} images x {len(SYNTH_CLASSES)} classes in {time.monotonic() - t:.1f}s")

    # 2. autoencoder
    t = _step(f"2/5 autoencoder -> {RunFolder(vae_run).vae_dir}")
    if cfg.autoencoder.source:
        print(f"   using autoencoder.source={cfg.autoencoder.source}")
        vae_source = cfg.autoencoder.source
    elif RunFolder(vae_run).has_vae:
        print("   already trained, skipped")
        vae_source = str(vae_run)
    else:
        from ldm.training.autoencoder import train_vae

        # an earlier start was interrupted: continue it
        resume = RunFolder.LATEST if RunFolder(vae_run).latest_checkpoint() is not None else None
        result = train_vae(cfg, data_dir, vae_run, progress=True, resume=resume)
        print(f"   done in {time.monotonic() - t:.0f}s: {result}")
        vae_source = str(vae_run)

    # 3. latent cache (prepare itself does no work when the cache is up to date)
    _step(f"3/5 latent cache -> {cache}")
    from ldm.data.latents import prepare_latents

    prepare_latents(data_dir, vae_source, cache, cfg, device=args.device, progress=True)

    # 4. diffusion training
    t = _step(f"4/5 diffusion training -> {run_dir}")
    from ldm.training.trainer import train

    run = RunFolder(run_dir)
    status = run.read_status() if run_dir.exists() else None
    if status and status.get("state") == "finished" and run.has_pipeline:
        print("   already trained, skipped")
    else:
        resume = RunFolder.LATEST if run.has_latest else None
        if resume:
            print("   resuming from the latest checkpoint")
        train(cfg, cache, run_dir, resume=resume, progress=True)
        print(f"   done in {time.monotonic() - t:.0f}s")

    # 5. final grid: one row per class, from the exported pipeline (the same path `ldm sample` takes)
    _step(f"5/5 sample grid -> {grid}")
    from ldm.cli import main as ldm_main

    classes = run.read_classes()
    argv = ["sample", "--run", str(run_dir), "-n", "8", "--seed", "0", "--out", str(run_dir / "final-samples")]
    for c in classes:
        argv += ["--class", c]
    if args.device:
        argv += ["--device", args.device]
    if ldm_main(argv) != 0:
        return 1
    print(f"\nquickstart finished in {(time.monotonic() - t_all) / 60:.1f} min")
    print(f"final grid: {grid}")
    print(f"generate more:  ldm sample --run {run_dir} --class smiling -n 8 --out samples/")
    print("or open the app: python app.py")
    return 0
