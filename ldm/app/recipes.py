"""The repository's recipes as the Training tab's presets, each with what it was measured to give.

    settings = recipe_settings("faces", current)    # the form filled with configs/faces.yaml, data fields kept
    recipe_summary("faces")    # "faces: 15 min on 2 cores (...) -> 2390 steps, class accuracy 1.00, KID 0.023"
    budget_estimate("faces", minutes=10, max_steps=0)   # steps that budget gives and the quality measured there

The numbers come from the committed benchmark records (``docs/benchmarks/*.json``, written by
``scripts/bench_recipes.py`` and ``scripts/bench_quality.py``), never from text typed here; without the records
(an installed package without the repository) the presets still fill the form, with no numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldm.app.settings import TrainSettings, settings_from_yaml
from ldm.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "docs" / "benchmarks"
CUSTOM = "(your own)"  # the preset choice that leaves the form as it is


@dataclass(frozen=True)
class Recipe:
    name: str
    config: str  # relative to the repository
    what: str  # what it is for, in a few words


RECIPES = (
    Recipe("demo", "configs/demo.yaml", "synthetic cartoon faces, 5 expressions: the quickstart's recipe"),
    Recipe("faces", "configs/faces.yaml", "a small folder of face photos, one subfolder per person"),
    Recipe("original", "configs/seed.yaml", "the original student project's recipe, to compare against"),
)
# the Training tab's fields a preset leaves alone: where the data is and what the run is called
KEPT = ("data_dir", "preprocess", "latent_dir", "autoencoder", "run_name", "processes")


def default_settings() -> TrainSettings:
    """The Training tab's settings before anything is typed: the demo recipe (measured), else the plain defaults."""
    return recipe_settings("demo") if "demo" in recipe_names() else TrainSettings()


def recipe_names() -> list[str]:
    return [CUSTOM, *(r.name for r in RECIPES if (ROOT / r.config).is_file())]


def _recipe(name: str) -> Recipe:
    for r in RECIPES:
        if r.name == name:
            return r
    raise UserError(f"unknown recipe {name!r}; choose one of {', '.join(r.name for r in RECIPES)}")


def recipe_settings(name: str, current: TrainSettings | None = None) -> TrainSettings:
    """The settings of recipe ``name`` (its config file), keeping ``current``'s data folders and run name."""
    recipe = _recipe(name)
    settings = settings_from_yaml((ROOT / recipe.config).read_text())
    for key in KEPT:
        setattr(settings, key, getattr(current or TrainSettings(), key))
    return settings


def _newest(script: str, has: Callable[[dict[str, Any]], Any]) -> dict[str, Any] | None:
    """The newest record of ``script`` (by its UTC time) for which ``has(results)`` is true, or None."""
    records = []
    for path in RECORDS.glob(f"{script}-*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and has(record.get("results") or {}):
            records.append(record)
    return max(records, key=lambda r: str(r.get("utc", "")), default=None)


def _measured(name: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the recipe's row of the newest bench_recipes record, that record); for ``faces`` without one, its row of
    the newest ``bench_quality`` record (one point: the end of its run, on one thread); else None."""
    record = _newest("bench_recipes", lambda results: (results.get("recipes") or {}).get(name))
    row = ((record or {}).get("results") or {}).get("recipes", {}).get(name)
    if row and record:
        return row, record
    if name != "faces":
        return None
    record = _newest("bench_quality", lambda results: (results.get("rows") or {}).get("ours"))
    if record is None:
        return None
    ours, settings = record["results"]["rows"]["ours"], record["results"].get("settings") or {}
    steps, minutes = int(ours["training"]["steps"]), float(settings.get("minutes") or 15)
    threads = ours["training"].get("threads")
    row = {
        "minutes": minutes,
        "steps": steps,
        "steps_per_minute": steps / minutes,
        "data": Path(str(settings.get("data", "att-faces-20"))).name,
        "where": f"{threads} thread of a {_cpu(record)} CPU",
        "eval_num_samples": settings.get("num_samples"),
        "curve": [{"step": steps, "kid": ours["kid"], "class_accuracy": ours["class_accuracy"]}],
    }
    return row, record


def _cpu(record: dict[str, Any]) -> str:
    cpu = record.get("cpu") or {}
    return f"{cpu.get('cores', '?')}-core {cpu.get('kind', '?')}"


def _where(row: dict[str, Any], record: dict[str, Any]) -> str:
    return row.get("where") or f"a {_cpu(record)} CPU"


def recipe_summary(name: str) -> str:
    """One line: the recipe, what it is for, and its measured result and time (or that none is recorded)."""
    recipe = _recipe(name)
    head = f"**{recipe.name}** (`{recipe.config}`): {recipe.what}."
    measured = _measured(name)
    if measured is not None:
        row, record = measured
        last = (row.get("curve") or [{}])[-1]
        quality = ""
        if "class_accuracy" in last:
            quality = f", class accuracy {last['class_accuracy']:.2f}, KID {last['kid']:.3f}"
        return (
            f"{head} Measured: {row['minutes']:g} min of training on {_where(row, record)} -> {row['steps']} steps"
            f"{quality} ({row['data']}, {row.get('eval_num_samples', '?')} samples)."
        )
    if name == "original":
        record = _newest("bench_quality", lambda results: (results.get("rows") or {}).get("original"))
        rows = ((record or {}).get("results") or {}).get("rows") or {}
        original = rows.get("original")
        if original:
            minutes = (record["results"].get("settings") or {}).get("minutes")
            return (
                f"{head} Measured (the original's own code, {minutes:g} min on att-faces-20): class accuracy "
                f"{original['class_accuracy']:.2f}, KID {original['kid']:.3f}: grey-washed faces, often the wrong "
                "person."
            )
    return f"{head} No measurement recorded for it yet."


def budget_estimate(name: str, minutes: float, max_steps: int) -> str:
    """What a budget gives with recipe ``name``: the steps (at the measured speed) and the quality measured at about
    that many steps; '' when the recipe has no measured curve."""
    measured = _measured(name)
    if measured is None or not (minutes > 0 or max_steps > 0):
        return ""
    row, record = measured
    speed = float(row.get("steps_per_minute") or 0)
    limits = [int(max_steps)] if max_steps > 0 else []
    if minutes > 0 and speed > 0:
        limits.append(int(minutes * speed))
    if not limits:
        return ""
    steps = min(limits)
    curve = row.get("curve") or []
    reached = [p for p in curve if p["step"] <= steps]
    how = f"about {steps} steps"
    if minutes > 0:
        how += f" at the measured {speed:.0f} steps/min ({_where(row, record)})"
    if not reached:
        first = curve[0] if curve else None
        later = f"; the first measurement, at step {first['step']}, had class accuracy {first['class_accuracy']:.2f}"
        return f"Estimate: {how}: less than was measured{later if first else ''}."
    point = reached[-1]
    beyond = " (the longest measured)" if point is curve[-1] and steps > point["step"] * 1.2 else ""
    return (
        f"Estimate: {how} -> class accuracy about {point['class_accuracy']:.2f}, KID {point['kid']:.3f} "
        f"(measured at step {point['step']}{beyond} with {row.get('eval_num_samples', '?')} images)."
    )
