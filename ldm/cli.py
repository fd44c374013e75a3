"""The ``ldm`` command: ``ldm --help`` lists the subcommands; each is a thin layer over the library."""

from __future__ import annotations

import argparse
import importlib
import sys

from ldm.utils import set_runtime_defaults

# subcommand name -> module in ldm.commands (kept in the order a user meets them)
COMMANDS: dict[str, str] = {
    "quickstart": "quickstart",
    "data": "data",
    "train-vae": "train_vae",
    "prepare": "prepare",
    "train": "train",
    "sample": "sample",
    "t2i": "t2i",
    "export": "export",
    "eval": "eval",
    "sweep": "sweep",
    "runs": "runs",
    "verify": "verify",
    "app": "app",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldm", description="Train class-conditional latent diffusion models on folders of images."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"ldm.commands.{module}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    set_runtime_defaults()  # before any subcommand imports torch
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    from ldm.config import ConfigError
    from ldm.errors import UserError

    try:
        return int(args._run(args) or 0)
    except (ConfigError, UserError) as e:
        print(f"ldm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ldm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
