"""The result record every benchmark script writes: ``docs/benchmarks/<script>-<UTC date>-<cpu kind>.json``.

    from bench_record import write_record
    path = write_record("bench_train", {"ratio": 1.2, ...})

A record holds the script's numbers (``results``) with what is needed to trust and reproduce them: the exact command
line, the UTC time, the CPU (model, kind, flags, torch's capability, cores), the versions of python, torch, diffusers
and accelerate, and the git commit (with whether the work tree had changes). ``scripts/bench_tables.py`` builds the
tables of ``docs/benchmarks.md`` from these files.
"""

from __future__ import annotations

import datetime
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECORDS_DIR = ROOT / "docs" / "benchmarks"
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


def cpu_kind(flags: list[str] | set[str], machine: str = "") -> str:
    """A short name for what decides the speed of our kernels: ``amx``, ``avx512-bf16`` (native bf16 arithmetic),
    ``avx512``, ``avx2``, or the machine's architecture (e.g. ``arm64``) when it has none of them."""
    flags = set(flags)
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return machine or "unknown"


def describe_machine() -> dict[str, Any]:
    """The CPU: ``{"model", "kind", "flags", "torch_capability", "cores", "threads"}``."""
    import platform

    import torch

    from ldm.device import cpu_model_and_flags

    model, flags = cpu_model_and_flags()
    return {
        "model": model,
        "kind": cpu_kind(flags, platform.machine()),
        "flags": flags,
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


def git_commit(root: Path = ROOT) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the checkout at ``root`` (None when it is not a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def make_record(script: str, results: dict[str, Any], argv: list[str] | None = None) -> dict[str, Any]:
    """The record of one run of ``script`` (e.g. ``"bench_quality"``) with its ``results``."""
    from ldm.device import library_versions

    argv = sys.argv if argv is None else argv
    return {
        "script": script,
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *argv]),
        "cpu": describe_machine(),
        "versions": library_versions(),
        "git": git_commit(),
        "results": results,
    }


def write_record(
    script: str, results: dict[str, Any], out_dir: str | Path = RECORDS_DIR, argv: list[str] | None = None
) -> Path:
    """Write the record to ``out_dir/<script>-<UTC date>-<cpu kind>.json`` (``-2``, ``-3``, ... when that name is
    taken, so no run overwrites another) and return its path."""
    from ldm.utils import atomic_write_json

    record = make_record(script, results, argv)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{script}-{record['utc'][:10]}-{record['cpu']['kind']}"
    path, n = out_dir / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = out_dir / f"{stem}-{n}.json"
    atomic_write_json(path, record)
    return path
