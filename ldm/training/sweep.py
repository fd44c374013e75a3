"""Sweeps: every combination of a few settings (and seeds), each trained in turn as an ordinary run folder, compared.

    grid = parse_grid(["training.learning_rate=5e-4,1e-3", "unet.preset=tiny,small"])
    members = plan_members(grid, seeds=[0])               # 4 members, named after their overrides
    check_members("configs/demo.yaml", members)           # ConfigError for an unknown key or a bad value, up front
    run_sweep(SweepSpec(...), should_stop=lambda: False)  # trains them; resumable; writes the summary after each

The sweep folder holds one run folder per member (``<out>/<member>/``, the same as ``ldm train --out``) and
``sweep.json`` (the plan and each member's state), ``summary.md`` (one row per member: its settings, steps, minutes,
final smoothed loss, KID, class accuracy, memorised share; the best by KID marked) and ``compare.png`` (smoothed
loss curves on shared axes, KID over steps where evaluated), rewritten after every member. Running the same sweep
again skips the finished members and resumes an interrupted one from its newest checkpoint.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ldm.config import ConfigError, load_config
from ldm.errors import UserError
from ldm.run_folder import RunFolder
from ldm.utils import atomic_write_json, atomic_write_text

SWEEP_FILE = "sweep.json"
SUMMARY = "summary.md"
FIGURE = "compare.png"


@dataclass
class Member:
    name: str  # its run folder's name: the overrides that make it, e.g. "learning_rate=0.001-preset=tiny"
    overrides: list[str]  # dotted key=value, applied after the base config and the sweep's own overrides


@dataclass
class SweepSpec:
    latents: str  # the latent cache every member trains on
    out: str  # the sweep folder
    config: str | None  # the base config (None: the defaults)
    grid: list[tuple[str, list[str]]]  # (key, values) per swept setting
    seeds: list[int] = field(default_factory=list)  # [] = the config's seed
    max_minutes: float = 0.0  # per member
    max_steps: int = 0  # per member
    eval_samples: int = 0  # images per member for `ldm eval` after it trained (0 = no evaluation)
    overrides: list[str] = field(default_factory=list)  # applied to every member


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """``["key=v1,v2", ...]`` -> ``[(key, [v1, v2]), ...]``; UserError for a malformed item or a key given twice."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        parts = [v.strip() for v in values.split(",")]
        if not sep or not key or not all(parts):
            raise UserError(f"--grid {item!r}: write KEY=VALUE,VALUE,... (e.g. training.learning_rate=5e-4,1e-3)")
        if key in (k for k, _ in grid):
            raise UserError(f"--grid: {key} is given twice; put all its values in one --grid {key}=A,B,C")
        grid.append((key, parts))
    if not grid:
        raise UserError("nothing to sweep: give at least one --grid KEY=VALUE,VALUE,...")
    return grid


def _name_part(key: str, value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", f"{key.rsplit('.', 1)[-1]}={value}")


def plan_members(grid: list[tuple[str, list[str]]], seeds: list[int] | None = None) -> list[Member]:
    """Every combination of the grid's values (the first key slowest), times the seeds when given."""
    members = []
    for values in itertools.product(*(vals for _, vals in grid)):
        overrides = [f"{key}={value}" for (key, _), value in zip(grid, values)]
        name = "-".join(_name_part(key, value) for (key, _), value in zip(grid, values))
        for seed in seeds or [None]:
            if seed is None:
                members.append(Member(name, overrides))
            else:
                members.append(Member(f"{name}-seed={seed}", [*overrides, f"training.seed={seed}"]))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise UserError("two members of the sweep would get the same folder name; make the values distinct")
    return members


def member_overrides(spec: SweepSpec, member: Member) -> list[str]:
    """A member's full override list: the sweep's budget, its own overrides, then the member's settings."""
    budget = [f"training.max_minutes={spec.max_minutes}", f"training.max_steps={spec.max_steps}", "training.epochs=0"]
    return [*budget, *spec.overrides, *member.overrides]


def check_members(spec: SweepSpec, members: list[Member]) -> None:
    """Resolve every member's config before any training: an unknown key or a value of the wrong type is a
    ConfigError naming it, and a member that could never stop is refused."""
    from ldm.training.trainer import check_diffusion_config, check_training_config

    if spec.max_minutes <= 0 and spec.max_steps <= 0:
        raise UserError("give each member a budget: --max-minutes M and/or --max-steps N")
    for member in members:
        try:
            cfg = load_config(spec.config, member_overrides(spec, member))
        except ConfigError as e:
            raise ConfigError(f"member {member.name}: {e}") from None
        check_training_config(cfg.training)
        check_diffusion_config(cfg.diffusion)


def member_state(run: Path) -> str:
    """``finished`` (trained, with its pipeline), ``resumable`` (a checkpoint to continue from) or ``new``."""
    folder = RunFolder(run)
    status = folder.read_status() or {}
    if status.get("state") == "finished" and folder.has_pipeline:
        return "finished"
    return "resumable" if folder.latest_checkpoint() is not None else "new"


def write_summary(spec: SweepSpec, members: list[Member]) -> dict[str, Any]:
    """``sweep.json``, ``summary.md`` and ``compare.png`` of the sweep as it stands; returns the sweep.json dict."""
    from ldm.evaluation.compare import best_by_kid, compare_figure, markdown_table, summarise

    out = Path(spec.out)
    started = [m for m in members if RunFolder(out / m.name).is_run]
    rows = [summarise(out / m.name, m.name) for m in started]
    best = best_by_kid(rows)
    swept = {key: [next(o.split("=", 1)[1] for o in m.overrides if o.startswith(f"{key}=")) for m in started]
             for key, _ in spec.grid}  # fmt: skip
    if spec.seeds:
        swept["training.seed"] = [m.overrides[-1].split("=", 1)[1] for m in started]
    table = markdown_table(rows, swept, best)
    header = (
        f"# Sweep {out.name}\n\n{len(started)} of {len(members)} members started; each trained on `{spec.latents}` "
        + (f"with `{spec.config}`" if spec.config else "with the built-in defaults")
        + (f" and {len(spec.overrides)} settings of its own (in `{SWEEP_FILE}`)" if spec.overrides else "")
        + (f", {spec.max_minutes:g} min" if spec.max_minutes else "")
        + (f", {spec.max_steps} steps" if spec.max_steps else "")
        + ". Swept settings in bold"
        + ("; the best KID is marked.\n\n" if best else " (no member evaluated: no KID).\n\n")
    )
    atomic_write_text(out / SUMMARY, header + table)
    if started:
        compare_figure([out / m.name for m in started], out / FIGURE, [m.name for m in started])
    record = {
        **asdict(spec),
        "members": [{"name": m.name, "overrides": m.overrides, "state": member_state(out / m.name)} for m in members],
        "rows": rows,
        "best": best,
    }
    atomic_write_json(out / SWEEP_FILE, record)
    return record


def run_sweep(
    spec: SweepSpec,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
    on_member: Callable[[int, int, Member], None] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Train the members that are not finished (resuming an interrupted one), evaluate them when asked, and write the
    summary after each. A stop request stops the running member safely (checkpoint) and ends the sweep; running
    it again continues where it stopped. Returns the final sweep.json dict (``"stopped": True`` when stopped)."""
    from ldm.training.trainer import train

    members = plan_members(spec.grid, spec.seeds)
    check_members(spec, members)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    stop = should_stop or (lambda: False)
    write_summary(spec, members)
    for i, member in enumerate(members):
        run = out / member.name
        state = member_state(run)
        if on_member is not None:
            on_member(i, len(members), member)
        if state != "finished":
            cfg = load_config(spec.config, member_overrides(spec, member))
            resume = RunFolder.LATEST if state == "resumable" else None
            result = train(cfg, spec.latents, run, resume=resume, should_stop=stop, progress=progress, device=device)
            if result.state == "stopped":
                return {**write_summary(spec, members), "stopped": True}
        if spec.eval_samples > 0 and not RunFolder(run).eval_path.is_file():
            _evaluate(spec, run, device)
        write_summary(spec, members)
        if stop():
            return {**write_summary(spec, members), "stopped": True}
    return {**write_summary(spec, members), "stopped": False}


def _evaluate(spec: SweepSpec, run: Path, device: str | None) -> None:
    """``ldm eval`` of a member against the images its latent cache was encoded from."""
    from ldm.data.manifest import Manifest
    from ldm.evaluation.report import evaluate_run

    real = Manifest.load(spec.latents).data_dir
    if not real or not Path(real).is_dir():
        raise UserError(
            f"--eval-samples: the latent cache {spec.latents} names no image folder that is still there ({real}); "
            "evaluation needs the real images"
        )
    evaluate_run(run, real, num_samples=spec.eval_samples, device=device, log=print)
