"""Launch the ldm Gradio app: ``python app.py [--workspace DIR] [--host 127.0.0.1] [--port 7860]``.

The UI lives in ``ldm/app.py`` (``build_app``); this file only parses arguments. Same as ``ldm app``.
"""

from __future__ import annotations

import argparse

from ldm.commands import app as app_command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python app.py", description=app_command.HELP)
    app_command.add_arguments(parser)
    raise SystemExit(app_command.run(parser.parse_args()))
