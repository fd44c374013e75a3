"""``ldm data``: make the demo dataset (``synth-faces``) or check a class-folder dataset (``inspect``)."""

from __future__ import annotations

import argparse
import time

HELP = "make the demo dataset (synth-faces) or inspect a class-folder dataset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = sub.add_parser(
        "synth-faces",
        help="draw the procedural cartoon-faces demo dataset (64x64 RGB, 5 expression classes)",
        description="Draw deterministic cartoon faces into OUT/<expression>/<i>.png. Same seed, same bytes.",
    )
    s.add_argument("--out", required=True, help="output folder (class subfolders are created in it)")
    s.add_argument("--per-class", type=int, default=200, help="images per class (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default: %(default)s)")
    i = sub.add_parser(
        "inspect",
        help="per-class counts, image sizes and modes, and unreadable files of a class-folder dataset",
        description="Scan DIR/<class>/<images> and report what training would use and what it would skip.",
    )
    i.add_argument("dir", help="dataset folder with one subfolder of images per class")


def run(args: argparse.Namespace) -> int:
    from ldm.errors import UserError

    if args.data_command == "synth-faces":
        from ldm.data.synth import SYNTH_CLASSES, make_synth_faces

        if args.per_class < 1:
            raise UserError(f"--per-class must be at least 1, got {args.per_class}")
        if args.seed < 0:
            raise UserError(f"--seed must be >= 0, got {args.seed}")
        t0 = time.perf_counter()
        paths = make_synth_faces(args.out, per_class=args.per_class, seed=args.seed)
        print(
            f"wrote {len(paths)} images ({args.per_class} per class: {', '.join(SYNTH_CLASSES)}) "
            f"to {args.out} in {time.perf_counter() - t0:.1f} s"
        )
        return 0
    from ldm.data.folders import scan_image_folder, summarize_scan

    print(summarize_scan(scan_image_folder(args.dir)))
    return 0
