"""What the subcommands share: ``--config FILE``, overrides, ``--dry-run``; the training commands' flags, resume and
safe stop on Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ldm.config import Config, load_config, to_yaml
from ldm.run_folder import RunFolder

T = TypeVar("T")


def add_config_arguments(p: argparse.ArgumentParser, default_config: str | None = None) -> None:
    p.add_argument("--config", default=default_config, help="YAML config file (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. training.batch_size=32")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def resolve_config(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    """Config from ``args.config`` + ``extra`` (from dedicated flags) + ``args.overrides`` (last wins)."""
    return load_config(args.config, list(extra or []) + list(args.overrides or []))


def dry_run(args: argparse.Namespace, cfg: Config) -> bool:
    """Print the resolved config and return True when ``--dry-run`` was given."""
    if getattr(args, "dry_run", False):
        sys.stdout.write(to_yaml(cfg))
        return True
    return False


def add_resume_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resume",
        default=None,
        metavar="latest|PATH",
        help="continue from the newest checkpoint of --out ('latest'), a run folder or a checkpoint folder; "
        f"without --config the run's own {RunFolder.CONFIG} is used",
    )


def flag_overrides(section: str, **flags: object) -> list[str]:
    """Overrides ``section.key=value`` for the dedicated flags that were given (None = not given)."""
    return [f"{section}.{key}={value}" for key, value in flags.items() if value is not None]


def resolve_training_config(
    args: argparse.Namespace, section: str, clearable: tuple[str, ...] = (), **flags: object
) -> tuple[Config, Path | None, bool]:
    """The config of a training command, with ``--resume`` the checkpoint meant, and whether the run is *continued*.

    Continuing a run continues its recipe: without ``--config`` the run's own resolved config is the base. ``flags``:
    the dedicated budget flags of ``section`` (``--max-steps`` ...), applied before the overrides. A budget flag
    given with ``--resume`` trains that much *more* (a new segment, see :mod:`ldm.training.loop`); the budget keys
    in ``clearable`` that were not given are then 0, so the flags alone say how long the continuation is."""
    ckpt = None
    if args.resume is not None:
        ckpt = RunFolder(args.out).resolve_resume(args.resume)
        run_config = RunFolder.of_checkpoint(ckpt).config_path
        if args.config is None and run_config.is_file():
            args.config = str(run_config)
    continuing = ckpt is not None and any(v is not None for v in flags.values())
    cleared = [f"{section}.{key}=0" for key in clearable if continuing and flags.get(key) is None]
    return resolve_config(args, cleared + flag_overrides(section, **flags)), ckpt, continuing


def run_stoppable(prog: str, threads: int | None, train: Callable[[StopFlag], T]) -> T | None:
    """Run ``train(stop)`` with ``--threads`` applied and Ctrl-C/SIGTERM wired to ``stop``; a diverged run is
    reported as an error (None returned, the command exits 1)."""
    from ldm.training.loop import TrainingDiverged

    if threads:
        import torch

        torch.set_num_threads(threads)
    with StopFlag() as stop:
        try:
            return train(stop)
        except TrainingDiverged as e:
            print(f"ldm {prog}: error: {e}", file=sys.stderr)
            return None


class StopFlag:
    """SIGINT/SIGTERM -> a stop request polled by the trainer after each step; a second SIGINT raises
    KeyboardInterrupt (the newest checkpoint stays usable)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.event.set()
        name = signal.Signals(signum).name
        print(
            f"\n{name}: stopping after this step and saving a checkpoint (Ctrl-C again to abort without saving)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def __call__(self) -> bool:
        return self.event.is_set()
