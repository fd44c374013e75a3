"""Launch the ldm Gradio app: ``python app.py [--workspace DIR] [--host 127.0.0.1] [--port 7860]``.

The UI lives in ``ldm/app/`` (``ldm.app.blocks.build_app``); this file only parses arguments. Same as ``ldm app``.
"""

from __future__ import annotations

import argparse

from ldm.commands import app as app_command
from ldm.utils import set_runtime_defaults

if __name__ == "__main__":
    set_runtime_defaults()  # as the ``ldm`` command does, before the app imports torch
    parser = argparse.ArgumentParser(prog="python app.py", description=app_command.HELP)
    app_command.add_arguments(parser)
    raise SystemExit(app_command.run(parser.parse_args()))
