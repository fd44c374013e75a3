"""``ldm sweep``: every combination of a few settings trained in turn as run folders, then compared.

    ldm sweep --latents data/latents/demo --out runs/sweeps/lr --config configs/demo.yaml \\
        --grid training.learning_rate=5e-4,1e-3,2e-3 --max-minutes 3 --eval-samples 100
    ldm sweep ... --grid unet.preset=tiny,small --seeds 0,1 --dry-run        # list the members, train nothing

Each member is an ordinary run folder ``<out>/<member>/`` named after its settings. After each member the sweep
folder gets ``sweep.json``, ``summary.md`` (the best KID marked) and ``compare.png``. Ctrl-C stops the running member
safely; the same command again skips the finished members and resumes the interrupted one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ldm.commands._common import run_stoppable

HELP = "train every combination of a few settings (a grid) as run folders and compare them"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latents", required=True, metavar="CACHE", help="latent cache every member trains on")
    p.add_argument("--out", required=True, help="sweep folder, e.g. runs/sweeps/NAME")
    p.add_argument("--config", default=None, help="base YAML config (default: the built-in defaults)")
    p.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2", help="a setting and its values (repeatable)"
    )
    p.add_argument("--seeds", default="", help="comma list of training seeds: each combination once per seed")
    p.add_argument("--max-minutes", type=float, default=0.0, help="training minutes per member")
    p.add_argument("--max-steps", type=int, default=0, help="training steps per member")
    p.add_argument("--eval-samples", type=int, default=0, help="evaluate each member with N images (0 = no)")
    p.add_argument("--dry-run", action="store_true", help="list the members and exit")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the best available)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings for every member")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ldm.errors import UserError
    from ldm.training.sweep import SweepSpec, check_members, member_state, parse_grid, plan_members, run_sweep

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r}: a comma list of whole numbers, e.g. 0,1,2") from None
    if args.eval_samples < 0:
        raise UserError("--eval-samples must be 0 (no evaluation) or more")
    spec = SweepSpec(
        latents=args.latents, out=args.out, config=args.config, grid=parse_grid(args.grid), seeds=seeds,
        max_minutes=args.max_minutes, max_steps=args.max_steps, eval_samples=args.eval_samples,
        overrides=list(args.overrides),
    )  # fmt: skip
    members = plan_members(spec.grid, seeds)
    check_members(spec, members)  # every member's config, before any training
    if args.dry_run:
        for i, m in enumerate(members, 1):
            print(f"{i}/{len(members)} {m.name} [{member_state(Path(args.out) / m.name)}]: {' '.join(m.overrides)}")
        return 0
    if not Path(args.latents).is_dir():
        raise UserError(f"--latents {args.latents}: no such folder (make one with `ldm prepare`)")

    def on_member(i: int, n: int, m: Any) -> None:
        print(f"== run {i + 1} of {n}: {m.name} ({' '.join(m.overrides)})", flush=True)

    def start(stop: Callable[[], bool]) -> dict[str, Any]:
        return run_sweep(spec, should_stop=stop, on_member=on_member, device=args.device)

    result = run_stoppable("sweep", args.threads, start)
    if result is None:
        return 1
    print(Path(args.out, "summary.md").read_text(), end="")
    if result["stopped"]:
        print("stopped: run the same command again to continue the sweep")
    return 0
