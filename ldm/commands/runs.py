"""``ldm runs``: the runs of a folder as a table; ``--compare`` puts chosen runs side by side.

ldm runs                                   # every run below runs/: status, steps, minutes, loss, KID if evaluated
ldm runs runs/sweeps/lr
ldm runs --compare runs/lr5e-4 runs/lr1e-3 --figure compare.png   # + the settings that differ, and a figure
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "list runs (status, steps, minutes, loss, KID); --compare RUN RUN ...: side by side, with a figure"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", nargs="?", default="runs", help="folder to list the runs of (default: %(default)s)")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="run folders to compare (the settings that differ)")
    p.add_argument("--figure", default="compare.png", help="with --compare: the figure to write (%(default)s)")


def run(args: argparse.Namespace) -> int:
    from ldm.errors import UserError
    from ldm.evaluation.compare import (
        best_by_kid,
        compare_figure,
        differing_settings,
        find_runs,
        markdown_table,
        summarise,
    )
    from ldm.run_folder import RunFolder

    if args.compare:
        runs = [Path(r) for r in args.compare]
        missing = [str(r) for r in runs if not RunFolder(r).is_run]
        if missing:
            what = f"{RunFolder.CONFIG} and {RunFolder.STATUS}"
            raise UserError(f"not a run folder (no {what}): {', '.join(missing)}")
        rows = [summarise(r, str(r)) for r in runs]
        print(markdown_table(rows, differing_settings(runs), best_by_kid(rows)), end="")
        print(f"figure: {compare_figure(runs, args.figure, [str(r) for r in runs])}")
        return 0
    folder = Path(args.folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder (give the folder that holds your runs, e.g. runs)")
    runs = find_runs(folder)
    if not runs:
        print(f"no runs below {folder}")
        return 0
    rows = [summarise(r, r.relative_to(folder).as_posix() if r != folder else r.name) for r in runs]
    print(markdown_table(rows, best=best_by_kid(rows)), end="")
    return 0
