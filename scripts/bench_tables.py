"""Regenerate the tables of docs/benchmarks.md from the benchmark records in docs/benchmarks/*.json.

    python scripts/bench_tables.py            # rewrite the generated tables of docs/benchmarks.md
    python scripts/bench_tables.py --check    # exit 1 when a table differs from its records

A generated table sits between ``<!-- table:NAME -->`` and ``<!-- /table -->``, NAME a benchmark script
(``bench_quality``, ``bench_sample``, ``bench_train``). Its rows come from every record ``NAME-*.json`` (written by
``scripts/bench_record.py``), oldest first, each row ending with the record's CPU, date, commit and file. Everything
outside the markers is left as it is.
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
DOC = ROOT / "docs" / "benchmarks.md"
RECORDS_DIR = ROOT / "docs" / "benchmarks"
TABLE = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
RECORD_COLUMNS = ["CPU", "date", "commit", "record"]


def _num(x: Any, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def quality_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """``scripts/bench_quality.py``: one row per recipe."""
    s = results["settings"]
    head = ["recipe", "KID", "FID", "class accuracy", "train steps", "sampling", "budget"]
    rows = []
    for row in results["rows"].values():
        sp = row["sampling"]
        guidance = f", guidance {sp['guidance_scale']:g}" if sp.get("guidance_scale") else ", no guidance"
        rows.append(
            [
                row["label"],
                f"{row['kid']:.4f} ± {row['kid_std']:.4f}",
                f"{row['fid']:.1f}",
                f"{row['class_accuracy']:.3f}",
                str(row["training"]["steps"]),
                f"{sp['scheduler']} {sp['steps']}{guidance}",
                f"{s['minutes']:g} min x {s['threads']} thread(s), {s['num_samples']} samples",
            ]
        )
    return head, rows


def sample_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """``scripts/bench_sample.py``: one row per run."""
    head = ["model", "ours s/image", "original s/image", "speed-up (wall)", "speed-up (CPU)", "threads"]
    row = [
        results["model"],
        f"{results['ours_s_per_image']:.2f}",
        f"{results['original_s_per_image']:.2f}",
        f"{results['speedup']:.1f}x",
        f"{results['speedup_cpu']:.1f}x",
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


FORMATTERS: dict[str, Callable[[dict], tuple[list[str], list[list[str]]]]] = {
    "bench_quality": quality_rows,
    "bench_sample": sample_rows,
    "bench_train": train_rows,
}


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
        lines += ["| " + " | ".join(row + extra) + " |" for row in rows]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *lines]) + "\n"


def update_tables(text: str, records_dir: Path, link_base: str = "benchmarks/") -> str:
    """``text`` with every marked table regenerated from the records in ``records_dir``."""

    def table(m: re.Match) -> str:
        name = m.group("name")
        if name not in FORMATTERS:
            raise SystemExit(f"bench_tables: unknown table {name!r}; known: {', '.join(FORMATTERS)}")
        return m.group(1) + render_table(name, load_records(name, records_dir), link_base) + m.group(4)

    return TABLE.sub(table, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--doc", type=Path, default=DOC, help="markdown file with marked tables (default: %(default)s)")
    p.add_argument("--records", type=Path, default=RECORDS_DIR, help="record folder (default: %(default)s)")
    p.add_argument("--check", action="store_true", help="only check: exit 1 when a table is out of date")
    args = p.parse_args(argv)
    text = args.doc.read_text()
    link_base = Path(os.path.relpath(args.records, args.doc.parent)).as_posix() + "/"
    new = update_tables(text, args.records, link_base)
    if args.check:
        if new != text:
            print(f"{args.doc}: tables out of date; run scripts/bench_tables.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.doc.write_text(new)
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
