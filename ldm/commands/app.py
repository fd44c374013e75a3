"""``ldm app``: start the Gradio app (Inference, Training and Runs tabs) on 127.0.0.1."""

from __future__ import annotations

import argparse

HELP = "start the web app (inference, training, runs) for a workspace folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workspace",
        default=".",
        help="root folder of datasets, latent caches and runs; the app refuses folders outside it (default: .)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)"
    )
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    p.add_argument("--device", default=None, help="device for generation: cpu, cuda, mps (default: the best present)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ldm.app.blocks import launch_app

    launch_app(Path(args.workspace), host=args.host, port=args.port, device=args.device)
    return 0
