"""Small shared helpers: atomic writes, hashing, seeding, environment defaults of the entry points."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Environment defaults of the entry points, read by native libraries when torch is first imported.
# GOMP_SPINCOUNT: how long an idle OpenMP thread spin-waits for work before sleeping. libgomp's default makes two busy
# processes on a 2-core machine slow each other down badly, while 0 makes a training step on an idle machine much
# slower; 10000 keeps nearly all of the speed of spinning (numbers in docs/benchmarks.md). The tests set 0.
RUNTIME_DEFAULTS: dict[str, str] = {"GOMP_SPINCOUNT": "10000"}


def set_runtime_defaults() -> None:
    """Set :data:`RUNTIME_DEFAULTS` in ``os.environ`` where the user has not set them (a user's own setting wins).

    Call it first thing in an entry point: it only has an effect before torch is imported.
    """
    for name, value in RUNTIME_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The file gets the permissions of an ordinary new file (0666 less the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None: JSON has no NaN (``json.dumps`` would write the
    invalid token ``NaN``, which other readers refuse)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically; NaN and infinities become null (see :func:`json_safe`)."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it is renamed to ``final`` (replacing it).

    A crash or kill inside the block leaves ``final`` untouched (only a ``.tmp-*`` folder, which readers ignore).
    The folder gets the permissions of an ordinary new folder (0777 less the umask), not mkdtemp's private 0700.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        tmp.chmod(0o777 & ~_umask())
        yield tmp
        if final.exists():
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def slugify(name: str) -> str:
    """A file-name-safe form of a class name or prompt (letters, digits, ``-`` and ``_``)."""
    out = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(name).strip())
    return "-".join(p for p in out.split("-") if p) or "class"


def check_output_folder(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a folder this process can write into, checked before any work (nothing is created): it is a
    writable folder, or it does not exist yet and its nearest existing parent is a writable folder. Raises
    :class:`ldm.errors.UserError` naming ``flag`` otherwise (a file in the way, no write permission)."""
    from ldm.errors import UserError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder (it is created when missing)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, so the folder cannot be created there")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (its parent {existing} is not writable)"
        raise UserError(f"{flag} {path}: this user cannot write there{where}; give a folder you can write to")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# paths recorded in files: portable workspaces

WORKSPACE_MARKER = ".ldm-app"  # a folder holding this one is a workspace (the app and `ldm quickstart` make it)


def workspace_of(folder: str | Path) -> Path | None:
    """The workspace ``folder`` belongs to: the nearest folder at or above it that holds ``.ldm-app/``, else the
    current folder when ``folder`` lies inside it (``ldm train --out runs/x`` run from a project folder)."""
    folder = Path(folder).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / WORKSPACE_MARKER).is_dir():
            return candidate
    cwd = Path.cwd().resolve()
    if cwd != Path(cwd.anchor) and folder.is_relative_to(cwd):
        return cwd
    return None


def recorded_path(target: str | Path, base: str | Path) -> str:
    """How a file in folder ``base`` records the local path ``target``: relative to ``base`` ("./..." or "../...")
    when both lie inside base's workspace, so a moved or copied workspace keeps working; absolute otherwise (data
    outside the workspace stays where it is)."""
    target, base = Path(target).resolve(), Path(base).resolve()
    ws = workspace_of(base)
    if ws is None or not target.is_relative_to(ws):
        return str(target)
    rel = Path(os.path.relpath(target, base)).as_posix()
    return rel if rel.startswith("..") else f"./{rel}"


def resolve_recorded(text: str | None, base: str | Path) -> str | None:
    """The absolute path of a path :func:`recorded_path` wrote into a file in ``base`` ("./..." and "../..." are
    taken from ``base``); anything else (an absolute path, a hub id, None) is returned as it is."""
    if isinstance(text, str) and (text.startswith("./") or text.startswith("../") or text in (".", "..")):
        return str((Path(base) / text).resolve())
    return text


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def hash_folder(folder: str | Path, patterns: tuple[str, ...] = ("*.safetensors", "*.bin", "*.json")) -> str:
    """Content hash of the weight and config files of a model folder (recursively), order-independent of listing."""
    folder = Path(folder)
    h = hashlib.sha256()
    files = sorted({p for pat in patterns for p in folder.rglob(pat) if p.is_file()})
    for p in files:
        h.update(str(p.relative_to(folder)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
