"""Regenerate the tables of docs/benchmarks.md from the benchmark records in docs/benchmarks/*.json.

    python scripts/bench_tables.py            # rewrite the generated tables of docs/benchmarks.md and README.md
    python scripts/bench_tables.py --check    # exit 1 when a table differs from its records

A generated table sits between ``<!-- table:NAME -->`` and ``<!-- /table -->``. With NAME a benchmark script
(``bench_quality``, ``bench_sample``, ``bench_train``, ``bench_vae_colour``) its rows come from every record
``NAME-*.json`` (written by ``scripts/bench_record.py``), oldest first, each row ending with the record's CPU, date,
commit and file. NAME ``bench_quality-summary`` is the README's results table: the newest ``bench_quality`` record
that has the original as it ran. Everything outside the markers is left as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / "benchmarks.md", ROOT / "README.md"]
RECORDS_DIR = ROOT / "docs" / "benchmarks"
TABLE = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
RECORD_COLUMNS = ["CPU", "date", "commit", "record"]


def _num(x: Any, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def _sampling_text(sp: dict | None) -> str:
    if not sp:
        return ""
    guidance = f", guidance {sp['guidance_scale']:g}" if sp.get("guidance_scale") else ", no guidance"
    return f"{sp['scheduler']} {sp['steps']}{guidance}"


def quality_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """``scripts/bench_quality.py``: one row per recipe (and sampling variant), with the floor."""
    s = results["settings"]
    head = ["recipe", "KID", "FID", "class accuracy", "train steps", "sampling", "samples", "budget"]
    rows = []
    for row in results["rows"].values():
        sp, tr = row.get("sampling"), row.get("training")
        rows.append(
            [
                row["label"],
                f"{row['kid']:.4f} ± {row['kid_std']:.4f}",
                f"{row['fid']:.1f}",
                f"{row['class_accuracy']:.3f}",
                str(tr["steps"]) if tr else "",
                _sampling_text(sp),
                str(sp.get("num_samples", s["num_samples"])) if sp else str(results.get("num_real", "")),
                f"{s['minutes']:g} min x {s['threads']} thread(s)" if tr else "",
            ]
        )
    return head, rows


def quality_summary(records: list[tuple[Path, dict]], link_base: str) -> str:
    """The README's results: the newest ``bench_quality`` record with the original as it ran; its rows (without the
    extra guidance scales) and ratios against that original, and a line saying how it was measured."""
    full = [(p, r) for p, r in records if "original" in r["results"]["rows"]]
    if not full:
        return "_No record of `scripts/bench_quality.py` with the original as it ran yet._\n"
    path, rec = full[-1]
    res = rec["results"]
    s, ratios = res["settings"], res.get("ratios", {})
    head = ["recipe", "KID", "FID", "class accuracy", "KID vs original", "train steps", "sampling", "images"]
    rows = []
    for name, row in res["rows"].items():
        if "-guidance-" in name:
            continue  # other guidance scales of a row's model: docs/benchmarks.md
        q = ratios.get(name, {})
        tr = row.get("training")
        rows.append(
            [
                row["label"],
                f"{row['kid']:.3f}",
                f"{row['fid']:.0f}",
                f"{row['class_accuracy']:.2f}",
                f"{q['kid_original_over_row']:.1f}x better" if q else ("" if name != "original" else "1x"),
                str(tr["steps"]) if tr else "",
                _sampling_text(row.get("sampling")),
                str(
                    row["sampling"].get("num_samples", s["num_samples"])
                    if row.get("sampling")
                    else res.get("num_real", "")
                ),
            ]
        )
    note = (
        f"{Path(s['data']).name} at {s['image_size']}x{s['image_size']}, one autoencoder ({s['vae_minutes']:g} min) "
        f"for all rows, {s['minutes']:g} min of diffusion training per recipe on {s['threads']} thread(s) each, "
        f"{s['parallel']} side by side; {rec['cpu']['kind']} CPU ({rec['cpu']['model']}), {rec['utc'][:10]}, "
        f"record [{path.name}]({link_base}{path.name})."
    )
    return _markdown(head, rows) + "\n" + note + "\n"


def sample_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """``scripts/bench_sample.py``: one row per run; with the quality of both samplers when it was measured."""
    head = ["model", "work per image", "DDPM 1000 s/image", "ours", "ours s/image", "speed-up (wall, CPU)",
            "quality DDPM 1000 (KID, acc.)", "quality ours (KID, acc.)", "threads"]  # fmt: skip
    q = results.get("quality") or {}

    def qtext(side: str) -> str:
        return f"{q[side]['kid']:.4f}, {q[side]['class_accuracy']:.3f}" if side in q else "not measured"

    row = [
        results["model"],
        results.get("work", ""),
        f"{results['original_s_per_image']:.3f}",
        results.get("ours_sampler", ""),
        f"{results['ours_s_per_image']:.3f}",
        f"{results['speedup']:.1f}x, {results['speedup_cpu']:.1f}x",
        qtext("ddpm"),
        qtext("ours"),
        str(results["threads"]),
    ]
    return head, [row]


def train_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """``scripts/bench_train.py``: one row per variant, the ratio against the plain loop (a)."""
    head = ["variant", "images/s", "CPU s/step", "GFLOP/s", "of peak", "vs (a)", "preset, batch", "threads"]
    variants = results["results"]
    base = next(iter(variants.values()))["images_per_s"]
    setup = f"{results['args']['preset']}, {results['args']['batch']}"
    rows = [
        [
            name,
            f"{v['images_per_s']:.1f}",
            f"{v['cpu_s_per_step']:.2f}",
            f"{v['gflops']:.1f}",
            f"{v['fraction_of_peak']:.1%}",
            f"{v['images_per_s'] / base:.2f}x",
            setup,
            str(results["threads"]),
        ]
        for name, v in variants.items()
    ]
    return head, rows


def memory_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """``scripts/bench_train.py --memory``: peak RSS per command."""
    head = ["command", "peak RSS (MiB)", "seconds"]
    return head, [[name, f"{r['peak_rss_mib']:.0f}", f"{r['seconds']:.0f}"] for name, r in results["results"].items()]


def vae_colour_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """``scripts/bench_vae_colour.py``: one row per autoencoder recipe, all at the same step count."""
    head = ["row", "overrides", "steps", "held-out PSNR / SSIM", "background colour error (/255)",
            "colourfulness (real)"]  # fmt: skip
    rows = [
        [
            name,
            ", ".join(f"`{o}`" for o in r["overrides"]),
            str(r["steps"]),
            f"{r['psnr']:.2f} dB / {r['ssim']:.3f}",
            f"{r['background_error']:.1f}",
            f"{r['colourfulness']:.1f} ({r['colourfulness_real']:.1f})",
        ]
        for name, r in results["rows"].items()
    ]
    return head, rows


def recipes_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """``scripts/bench_recipes.py``: one row per recipe, its curve of quick evaluations as step: accuracy / KID."""
    head = ["recipe", "data", "minutes", "steps", "steps/min", "precision", "class accuracy / KID at step"]
    rows = []
    for name, r in results["recipes"].items():
        curve = "; ".join(f"{p['step']}: {p['class_accuracy']:.2f} / {p['kid']:.3f}" for p in r["curve"])
        rows.append([f"{name} (`{r['config']}`)", r["data"], f"{r['minutes']:g}", str(r["steps"]),
                     f"{r['steps_per_minute']:.0f}", str(r.get("precision")), curve])  # fmt: skip
    return head, rows


def app_watch_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """``scripts/bench_app_watch.py``: steps per second of a training job by what the browser shows."""
    head = ["condition", "steps/s (median)", "cost of watching", "of which the refresh", "app's poll", "windows"]
    rates, cost = results["rates"], results["cost"]
    page = rates.get("open, no poll")  # older records have no such condition
    poll = (results.get("app") or {}).get("SLOW_POLL_SECONDS")
    rows = []
    for condition, rate in rates.items():
        n = sum(1 for w in results["windows"] if w["condition"] == condition)
        share = f"{100 * cost[condition]:.1f}%" if condition in cost else ""
        refresh = f"{100 * (1 - rate / page):.1f}%" if page and condition not in ("closed", "open, no poll") else ""
        rows.append([condition, f"{rate:.3f}", share, refresh, f"{poll:g} s" if poll else "",
                     f"{n} x {results['window_seconds']:g} s"])  # fmt: skip
    return head, rows


def watermark_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """``scripts/bench_watermark.py``: what finds the mark (marked images after each attack, unmarked images of each
    kind: false positives), and what the mark does to the images (PSNR, KID, class accuracy)."""
    head = ["images", "attack", "called marked", "right model id"]
    rows = []
    for attack, d in results["detection"].items():
        rows.append([f"generated, marked ({results['image']})", attack, f"{d['marked']} / {d['images']}",
                     f"{d['right_id']} / {d['images']}"])  # fmt: skip
    for kind, d in results["false_positives"].items():
        rows.append([f"unmarked: {kind}", "", f"{d['marked']} / {d['images']} (false positives)", ""])
    q = results["quality"]
    for name in ("unmarked", "marked", "marked_jpeg90", "unmarked_other_seeds"):
        r = q[name]
        numbers = f"KID {r['kid']:.4f} ± {r['kid_std']:.4f}, class accuracy {r['class_accuracy']:.2f}"
        rows.append([f"quality, {name.replace('_', ' ')}", "", numbers, ""])
    rows.append(
        ["PSNR marked vs unmarked", "", f"{results['psnr_mean']:.1f} dB mean, {results['psnr_min']:.1f} min", ""]
    )
    return head, rows


def quickstart_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """``scripts/bench_quickstart.py``: one row per lever, at the slow CPU's step count."""
    head = ["row", "overrides", "steps", "class accuracy", "KID", "FID", "weakest class"]
    rows = []
    for name, r in results["rows"].items():
        weakest = min(r["per_class"].items(), key=lambda kv: kv[1])
        settings = ", ".join(f"`{o}`" for o in r["overrides"]) or "(configs/demo.yaml)"
        if r.get("trained_with_other"):
            settings += " (trained with " + ", ".join(f"`{o}`" for o in r["trained_with_other"]) + ")"
        rows.append([name, settings, str(r["steps"]),
                     f"{r['class_accuracy']:.3f}", f"{r['kid']:.4f} ± {r['kid_std']:.4f}", f"{r['fid']:.1f}",
                     f"{weakest[0]} {weakest[1]:.2f}"])  # fmt: skip
    return head, rows


# Tables of every record of a script, one block of rows per record.
FORMATTERS: dict[str, Callable[[dict], tuple[list[str], list[list[str]]]]] = {
    "bench_quality": quality_rows,
    "bench_sample": sample_rows,
    "bench_train": train_rows,
    "bench_vae_colour": vae_colour_rows,
    "bench_train_memory": memory_rows,
    "bench_recipes": recipes_rows,
    "bench_quickstart": quickstart_rows,
    "bench_app_watch": app_watch_rows,
    "bench_watermark": watermark_rows,
}
# Tables made from a script's records as a whole (table name -> (script, formatter)).
SUMMARIES: dict[str, tuple[str, Callable[[list[tuple[Path, dict]], str], str]]] = {
    "bench_quality-summary": ("bench_quality", quality_summary),
}


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    return (
        "\n".join(
            ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]
        )
        + "\n"
    )


def load_records(name: str, records_dir: Path) -> list[tuple[Path, dict]]:
    """Every record of the script ``name`` in ``records_dir``, oldest first."""
    found = [(p, json.loads(p.read_text())) for p in sorted(Path(records_dir).glob(f"{name}-*.json"))]
    return sorted((r for r in found if r[1].get("script") == name), key=lambda r: r[1]["utc"])


def render_table(name: str, records: list[tuple[Path, dict]], link_base: str = "benchmarks/") -> str:
    """The markdown table of ``records`` of the script ``name`` (a line saying there is none when empty)."""
    if not records:
        return f"_No record of `scripts/{name}.py` yet._\n"
    header: list[str] = []
    lines = []
    for path, rec in records:
        head, rows = FORMATTERS[name](rec["results"])
        header = head + RECORD_COLUMNS
        git = rec.get("git") or {}
        commit = (git.get("commit") or "")[:7] + ("+" if git.get("dirty") else "")
        extra = [rec["cpu"]["kind"], rec["utc"][:10], commit, f"[{path.name}]({link_base}{path.name})"]
        lines += [row + extra for row in rows]
    return _markdown(header, lines)


def update_tables(text: str, records_dir: Path, link_base: str = "benchmarks/") -> str:
    """``text`` with every marked table regenerated from the records in ``records_dir``."""

    def table(m: re.Match) -> str:
        name = m.group("name")
        if name in SUMMARIES:
            script, summary = SUMMARIES[name]
            return m.group(1) + summary(load_records(script, records_dir), link_base) + m.group(4)
        if name not in FORMATTERS:
            known = ", ".join([*FORMATTERS, *SUMMARIES])
            raise SystemExit(f"bench_tables: unknown table {name!r}; known: {known}")
        return m.group(1) + render_table(name, load_records(name, records_dir), link_base) + m.group(4)

    return TABLE.sub(table, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--doc", type=Path, action="append", help="markdown file with marked tables (repeatable; default: "
                   "docs/benchmarks.md and README.md)")  # fmt: skip
    p.add_argument("--records", type=Path, default=RECORDS_DIR, help="record folder (default: %(default)s)")
    p.add_argument("--check", action="store_true", help="only check: exit 1 when a table is out of date")
    args = p.parse_args(argv)
    stale = []
    for doc in args.doc or DOCS:
        text = doc.read_text()
        link_base = Path(os.path.relpath(args.records, doc.parent)).as_posix() + "/"
        new = update_tables(text, args.records, link_base)
        if new == text:
            continue
        if args.check:
            stale.append(doc)
        else:
            doc.write_text(new)
            print(f"updated {doc}")
    if stale:
        print(f"tables out of date in {', '.join(map(str, stale))}; run scripts/bench_tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
