"""Subcommands of the ``ldm`` command: one module each with HELP, add_arguments(parser) and run(args) -> int.

Modules import torch and friends inside ``run`` so that ``ldm --help`` stays fast.
"""
