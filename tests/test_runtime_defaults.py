"""Environment defaults (the OpenMP spin count) come from the entry points, never from ``import ldm``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter whose environment lacks GOMP_SPINCOUNT (plus ``env``); its last stdout
    line is JSON."""
    clean = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    clean["PYTHONPATH"] = os.pathsep.join([str(ROOT), clean.get("PYTHONPATH", "")])
    clean.update(env)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_ldm_leaves_the_environment_alone():
    result = _run(
        "import json, os; before = dict(os.environ)\n"
        "import ldm, ldm.utils, ldm.cli, ldm.app.jobs, ldm.commands.app\n"
        "print(json.dumps({'same': dict(os.environ) == before, 'spin': os.environ.get('GOMP_SPINCOUNT')}))"
    )
    assert result == {"same": True, "spin": None}


def test_cli_entry_sets_the_default_before_torch_loads():
    result = _run(
        "import json, os, sys, contextlib, io\n"
        "from ldm import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()): rc = cli.main([])\n"
        "print(json.dumps({'rc': rc, 'spin': os.environ.get('GOMP_SPINCOUNT'), 'torch': 'torch' in sys.modules}))"
    )
    assert result == {"rc": 0, "spin": "10000", "torch": False}


def test_a_users_own_setting_wins():
    result = _run(
        "import json, os, contextlib, io\n"
        "from ldm import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()): cli.main([])\n"
        "print(json.dumps({'spin': os.environ.get('GOMP_SPINCOUNT')}))",
        GOMP_SPINCOUNT="7",
    )
    assert result == {"spin": "7"}


def test_app_launcher_and_worker_set_the_default():
    result = _run(
        "import json, os, runpy, sys, contextlib, io\n"
        "sys.argv = ['app.py', '--help']\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    runpy.run_path('app.py', run_name='__main__')\n"
        "app = os.environ.pop('GOMP_SPINCOUNT', None)\n"
        "from ldm.app import jobs\n"
        "with contextlib.redirect_stderr(io.StringIO()): rc = jobs.main([])\n"
        "print(json.dumps({'app': app, 'worker': os.environ.get('GOMP_SPINCOUNT'), 'rc': rc}))"
    )
    assert result == {"app": "10000", "worker": "10000", "rc": 2}
