"""Runs side by side: one summary row per run folder, the settings that differ between runs, and a comparison figure.

    rows = [summarise(r) for r in find_runs("runs")]       # status, steps, minutes, smoothed loss, KID if evaluated
    diff = differing_settings(["runs/a", "runs/b"])        # {"training.learning_rate": ["0.0005", "0.001"], ...}
    print(markdown_table(rows, diff))
    compare_figure(["runs/a", "runs/b"], "compare.png")    # smoothed loss curves on shared axes, KID over steps

Used by ``ldm runs``, ``ldm sweep`` and the app's Runs tab. Everything is read from the run folders
(``status.json``, ``metrics.jsonl``, ``config.yaml``, ``eval.json``): nothing is loaded onto a device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ldm.run_folder import RunFolder

SMOOTHING = 0.9  # of the loss curves and the "final smoothed loss" (the loss plots' smoothing)


def find_runs(root: str | Path, max_depth: int = 4) -> list[Path]:
    """Diffusion run folders at or below ``root`` (``config.yaml`` + ``status.json``, not an autoencoder's), sorted by
    path; hidden folders and the folders inside a run are not searched."""
    root = Path(root)
    found: list[Path] = []

    def walk(d: Path, depth: int) -> None:
        folder = RunFolder(d)
        if folder.is_run:
            status = folder.read_status() or {}
            if status.get("kind", "diffusion") == "diffusion":
                found.append(d)
            return
        if depth >= max_depth:
            return
        try:
            subs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for sub in subs:
            walk(sub, depth + 1)

    walk(root, 0)
    return found


def _smoothed(values: list[float]) -> list[float]:
    from ldm.figures import smooth_ema

    return smooth_ema(values, SMOOTHING)


def summarise(run: str | Path, name: str | None = None) -> dict[str, Any]:
    """One row: ``run, status, steps, minutes, loss`` (final smoothed), and from ``eval.json`` when ``ldm eval`` ran:
    ``kid, fid, class_accuracy, memorised`` (the share of generated images closer to a training image than the
    evaluation's threshold); else the newest quick evaluation of training (``training.eval_every``)."""
    folder = RunFolder(run)
    status = folder.read_status() or {}
    metrics = folder.read_metrics()
    losses = [float(r["loss"]) for r in metrics if isinstance(r.get("loss"), (int, float))]
    row: dict[str, Any] = {
        "run": name or folder.name,
        "status": status.get("state", "new"),
        "steps": int(status.get("step") or 0),
        "minutes": round(float(status.get("elapsed_seconds") or 0) / 60, 1),
        "loss": _smoothed(losses)[-1] if losses else None,
        "kid": None,
        "kid_std": None,
        "fid": None,
        "class_accuracy": None,
        "memorised": None,
        "evaluated": "",
    }
    try:
        ev = json.loads(folder.eval_path.read_text())
    except (OSError, ValueError):
        ev = None
    if isinstance(ev, dict) and ev.get("kid") is not None:
        accuracy = ev.get("class_accuracy")
        accuracy = accuracy.get("overall") if isinstance(accuracy, dict) else accuracy  # {"overall", "per_class"}
        row.update(kid=ev.get("kid"), kid_std=ev.get("kid_std"), fid=ev.get("fid"), class_accuracy=accuracy)
        row["memorised"] = (ev.get("memorisation") or {}).get("share_below_threshold")
        row["evaluated"] = f"ldm eval, {(ev.get('settings') or {}).get('num_samples', '?')} images"
    else:
        quick = [r for r in metrics if "eval_kid" in r]
        if quick:
            q = quick[-1]
            row.update(kid=q["eval_kid"], kid_std=q.get("eval_kid_std"), class_accuracy=q.get("eval_class_accuracy"))
            row["evaluated"] = f"quick, step {q['step']}, {q.get('eval_num_samples', '?')} images"
    return row


# keys that differ between runs without being a setting of the diffusion recipe: the budgets, and the sections that
# made the latent cache (a diffusion run's config carries them, but its cache decided them)
NOT_SETTINGS = ("training.max_minutes", "training.max_steps", "training.epochs", "training.device")
NOT_SECTIONS = ("autoencoder.", "data.")


def differing_settings(runs: list[str | Path]) -> dict[str, list[str]]:
    """The config keys whose values differ between ``runs`` (their ``config.yaml``), each with one value per run
    (as text; "-" where a run has no config); budgets are not settings and are left out."""
    import yaml

    from ldm.config import flatten

    configs = []
    for run in runs:
        try:
            configs.append(flatten(yaml.safe_load(RunFolder(run).config_path.read_text()) or {}))
        except (OSError, yaml.YAMLError):
            configs.append({})
    keys = sorted(k for k in {k for c in configs for k in c} - set(NOT_SETTINGS) if not k.startswith(NOT_SECTIONS))
    out = {}
    for key in keys:
        values = [json.dumps(c[key]) if key in c else "-" for c in configs]
        if len(set(values)) > 1:
            out[key] = [v.strip('"') for v in values]
    return out


def _fmt(value: Any, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _kid(r: dict[str, Any]) -> str:
    if r["kid"] is None:
        return ""
    return f"{r['kid']:.4f}" + (f" ± {r['kid_std']:.4f}" if isinstance(r.get("kid_std"), (int, float)) else "")


def markdown_table(rows: list[dict[str, Any]], settings: dict[str, list[str]] | None = None, best: str = "") -> str:
    """The rows as a markdown table; ``settings`` (from :func:`differing_settings`, one value per row) become bold
    columns; the row named ``best`` is marked, and a line under the table says whether its lead is beyond the
    evaluation's noise (:func:`kid_verdict`)."""
    settings = settings or {}
    head = ["run", *(f"**{k}**" for k in settings), "status", "steps", "minutes", "smoothed loss", "KID", "class acc.",
            "memorised", "evaluated"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows):
        cells = [
            f"**{r['run']}** (best KID)" if r["run"] == best else r["run"],
            *(f"**{values[i]}**" for values in settings.values()),
            r["status"],
            str(r["steps"]),
            f"{r['minutes']:g}",
            _fmt(r["loss"], 4),
            _kid(r),
            _fmt(r["class_accuracy"], 3),
            _fmt(r["memorised"], 2),
            r["evaluated"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    verdict = kid_verdict(rows, best)
    return "\n".join(lines) + "\n" + (f"\n{verdict}\n" if verdict else "")


def kid_verdict(rows: list[dict[str, Any]], best: str) -> str:
    """One sentence on the lowest KID: whether the runner-up's KID lies within the two evaluations' noise (their
    KID ± std ranges overlap), in which case the ranking says little; '' with fewer than two evaluated rows."""
    scored = sorted((r for r in rows if isinstance(r.get("kid"), (int, float))), key=lambda r: r["kid"])
    if len(scored) < 2 or not best:
        return ""
    first, second = scored[0], scored[1]
    spread = (first.get("kid_std") or 0.0) + (second.get("kid_std") or 0.0)
    if second["kid"] - first["kid"] <= spread:
        return (
            f"Lowest KID: {first['run']}, but {second['run']} is within the evaluations' noise (KID {_kid(first)} "
            f"against {_kid(second)}: the ranges overlap); evaluating with more images tells them apart."
        )
    return (
        f"Lowest KID: {first['run']}, ahead of {second['run']} by more than their KID std ({_kid(first)} against "
        f"{_kid(second)})."
    )


def best_by_kid(rows: list[dict[str, Any]]) -> str:
    """The name of the row with the lowest KID ('' when none was evaluated)."""
    scored = [r for r in rows if isinstance(r.get("kid"), (int, float))]
    return min(scored, key=lambda r: r["kid"])["run"] if scored else ""


def compare_figure(runs: list[str | Path], path: str | Path, names: list[str] | None = None) -> Path:
    """Smoothed loss curves of ``runs`` on shared axes and, beside them, KID over steps where evaluated (quick
    evaluations during training, and ``ldm eval``'s result at the run's last step); written atomically."""
    from ldm.figures import runs_figure

    series = []
    for run, name in zip(runs, names or [RunFolder(r).name for r in runs]):
        metrics = RunFolder(run).read_metrics()
        loss = [(r["step"], float(r["loss"])) for r in metrics if isinstance(r.get("loss"), (int, float))]
        kid = [
            (r["step"], float(r["eval_kid"]), float(r.get("eval_kid_std") or 0)) for r in metrics if "eval_kid" in r
        ]
        row = summarise(run)
        if row["evaluated"].startswith("ldm eval"):
            kid.append((row["steps"], float(row["kid"]), float(row["kid_std"] or 0)))
        series.append((name, loss, kid))
    return runs_figure(series, path, SMOOTHING)
