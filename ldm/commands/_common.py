"""Arguments shared by the subcommands that take a config: ``--config FILE``, overrides, ``--dry-run``."""

from __future__ import annotations

import argparse
import sys

from ldm.config import Config, load_config, to_yaml


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
