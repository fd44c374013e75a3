"""What watching costs: training steps per second with the app's Training tab open in a browser against closed.

    python scripts/bench_app_watch.py --latents runs/quickstart/data/latents/demo     # a quickstart's cache
    python scripts/bench_app_watch.py --latents CACHE --window 10 --rounds 1 --record-dir /tmp   # smoke run

A training job of the demo recipe (``configs/demo.yaml`` as the Training tab's preset fills it, on a copy of
``--latents`` inside a fresh workspace) runs in the app's worker process, as a student starts it. The app runs in
this process; a headless Chromium (Debian's, ``/usr/bin/chromium``) opens the page on the Training tab. Windows of
``--window`` seconds follow each other in rounds, the conditions interleaved so that a load change hits all of them
alike:

``closed``: no page open (the trainer alone);
``open``: the Training tab open, as the app draws it (a poll every ``LdmApp.SLOW_POLL_SECONDS`` once a job is past
    its first seconds; plot and grid sent only when their data changed, at most every ``LdmApp.PLOT_SECONDS``);
``open, poll every 5 s``: the same with a quicker poll (the app's before 2026-12-05);
``open, plot every 30 s``: the app's poll with the loss plot and grid sent at most every 30 s;
``open, redraw every poll``: the same page polling every 2 s with the plot and grid sent on every poll, the app's
    behaviour before;
``open, no poll``: the page open and its timer stopped after the first poll: what the open page costs by itself.

Each window also records the CPU seconds spent by the browser's processes, by this process (the app's server) and by
the worker's processes (the trainer), from ``/proc``: where the watching cost goes.

Each window's rate is steps per training second between the newest metrics lines (every 10 steps) at its start and
its end; the record (``scripts/bench_record.py``) keeps every window, the median rate per condition, the cost of
watching ``1 - open / closed`` and, when ``open, no poll`` was measured, what the refresh itself costs on top of the
open page: ``1 - rate / rate(open, no poll)``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_record import describe_machine, write_record  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CONDITIONS = (
    "closed",
    "open",
    "open, poll every 5 s",
    "open, plot every 30 s",
    "open, redraw every poll",
    "open, no poll",
)
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) so far of the browser's processes, this process and all others, from /proc."""
    out = {"browser": 0.0, "server": 0.0, "other": 0.0}
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / TICKS
        who = "server" if int(proc.name) == me else "browser" if b"chromium" in cmd else "other"
        out[who] += seconds
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latents", required=True, help="a latent cache of the demo recipe (ldm quickstart makes one)")
    p.add_argument("--window", type=float, default=40.0, help="seconds per window")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the three conditions")
    p.add_argument(
        "--conditions",
        nargs="+",
        default=list(CONDITIONS),
        choices=CONDITIONS,
        metavar="CONDITION",
        help="the conditions to measure, each quoted (default all): " + "; ".join(CONDITIONS),
    )
    p.add_argument("--record-dir", default=str(ROOT / "docs" / "benchmarks"))
    args = p.parse_args(argv)
    conditions = ["closed"] + [c for c in args.conditions if c != "closed"]

    from playwright.sync_api import sync_playwright

    from ldm.app.blocks import launch_app
    from ldm.app.handlers import LdmApp
    from ldm.app.recipes import recipe_settings
    from ldm.run_folder import RunFolder

    cpu = describe_machine()
    print(f"CPU: {cpu['model']} ({cpu['kind']}; {cpu['cores']} cores)", flush=True)
    ws = Path(tempfile.mkdtemp(prefix="bench-app-watch-"))
    shutil.copytree(args.latents, ws / "data" / "latents" / "demo")
    with socket.socket() as sock:  # a free port (gradio checks the one it is given)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = launch_app(ws, port=port, prevent_thread_lock=True, quiet=True)
    app: LdmApp = demo.ldm_app
    total = ((args.window + 5) * len(conditions) * args.rounds + 180) / 60  # + page loads, start-up, quick polls
    s = recipe_settings("demo")
    s.preprocess, s.latent_dir, s.run_name = "no", "data/latents/demo", "watched"
    s.max_minutes, s.max_steps = round(total, 1), 0
    s.extra = "\n".join(line for line in s.extra.splitlines() if not line.startswith(("data.", "autoencoder.")))
    message, _ = app.start_training(*s.values())
    print(message, flush=True)
    run = ws / "runs" / "watched"

    def step() -> int:
        return int((RunFolder(run).read_status() or {}).get("step") or 0)

    def mark() -> tuple[int, float]:
        """(step, training seconds) of the newest metrics line: exact, where status.json is a few steps behind."""
        rows = [r for r in RunFolder(run).read_metrics() if "loss" in r]
        return (int(rows[-1]["step"]), float(rows[-1]["elapsed"])) if rows else (0, 0.0)

    windows: list[dict] = []
    try:
        deadline = time.monotonic() + 120
        while step() < 20 and time.monotonic() < deadline:  # past the start-up (imports, the precision probe)
            time.sleep(1)
        # and past the job's first seconds, in which the tab polls quickly (LdmApp.QUICK_POLL_FOR)
        time.sleep(max(0.0, LdmApp.QUICK_POLL_FOR + 5 - (time.time() - float(app.jobs.current()["started"]))))
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            for r in range(args.rounds):
                for condition in conditions:
                    page = None
                    if condition != "closed":
                        eager = condition == "open, redraw every poll"
                        app.PLOT_SECONDS = 0.0 if eager else LdmApp.PLOT_SECONDS
                        app.SLOW_POLL_SECONDS = LdmApp.POLL_SECONDS if eager else LdmApp.SLOW_POLL_SECONDS
                        if condition == "open, poll every 5 s":
                            app.SLOW_POLL_SECONDS = 5.0
                        if condition == "open, plot every 30 s":
                            app.PLOT_SECONDS = 30.0
                        if condition == "open, no poll":
                            app.SLOW_POLL_SECONDS = 24 * 3600.0
                        app.redraw_every_poll = eager
                        page = browser.new_page(viewport={"width": 1280, "height": 1000})
                        page.goto(demo.local_url)
                        page.get_by_role("tab", name="Training").click()
                        page.wait_for_timeout(3000)  # the page settles: first poll drawn
                    s0, t0 = mark()
                    c0, w0 = cpu_seconds(), time.monotonic()
                    time.sleep(args.window)
                    s1, t1 = mark()
                    c1, w1 = cpu_seconds(), time.monotonic()
                    cpu = {k: round((c1[k] - c0[k]) / (w1 - w0), 3) for k in c0}  # cores busy on average
                    if page is not None:
                        page.close()
                    rate = (s1 - s0) / (t1 - t0)
                    windows.append(
                        {"round": r, "condition": condition, "steps": s1 - s0, "seconds": t1 - t0, "cores_busy": cpu}
                    )
                    busy = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
                    print(f"round {r + 1} {condition:24s} {rate:.3f} steps/s; cores busy: {busy}", flush=True)
            browser.close()
    finally:
        if app.jobs.is_running():
            app.jobs.stop()
            app.jobs.wait(120)
        demo.close()
        shutil.rmtree(ws, ignore_errors=True)

    rates = {
        c: statistics.median(w["steps"] / w["seconds"] for w in windows if w["condition"] == c) for c in conditions
    }
    cost = {c: 1 - rates[c] / rates["closed"] for c in conditions[1:]}
    page = rates.get("open, no poll")
    refresh_cost = {c: 1 - rates[c] / page for c in conditions[1:] if page and c != "open, no poll"}
    cores_busy = {
        c: {
            k: statistics.median(w["cores_busy"][k] for w in windows if w["condition"] == c)
            for k in windows[0]["cores_busy"]
        }
        for c in conditions
    }
    for c in conditions[1:]:
        print(f"{c}: {rates[c]:.3f} steps/s vs closed {rates['closed']:.3f}: costs {100 * cost[c]:.1f}%")
        if c in refresh_cost:
            print(f"    of which the refresh (vs the open page without it): {100 * refresh_cost[c]:.1f}%")
    for c in conditions:
        print(f"cores busy, {c}: " + ", ".join(f"{k} {v:.3f}" for k, v in cores_busy[c].items()))
    results = {
        "window_seconds": args.window,
        "rounds": args.rounds,
        "app": {k: getattr(LdmApp, k) for k in ("POLL_SECONDS", "SLOW_POLL_SECONDS", "PLOT_SECONDS")},
        "rates": rates,
        "cost": cost,
        "refresh_cost": refresh_cost,
        "cores_busy": cores_busy,
        "windows": windows,
    }
    print(f"record: {write_record('bench_app_watch', results, args.record_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
