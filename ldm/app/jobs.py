"""Training jobs of the app: a chain of ``ldm`` commands run by a detached worker process, stoppable and reattachable.

    jobs = JobManager(Workspace("."))
    jobs.start("runs/faces", [Phase("train", [sys.executable, "-m", "ldm", "train", ...])], log="app-job.log")
    jobs.current()   # {"state": "running", "phase": "train", "pid": ..., "run": ..., ...}
    jobs.stop()      # SIGINT: the trainer finishes its step, saves a checkpoint and exits 0

The worker (``python -m ldm.app.jobs run JOBFILE``) starts in its own session, so it outlives the app: after a page
reload or an app restart, :meth:`JobManager.current` finds it again through ``<workspace>/.ldm-app/job.json``.
The job file records the run, the log and the commands' paths relative to the workspace (the worker runs in it),
so a moved or copied workspace still knows its last job.
It runs the phases one after another (train-vae, prepare, train), writing stdout and stderr of each into the log,
and records the phase, its state and the exit code in the job file. Stop forwards SIGINT to the running phase and
skips the phases after it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ldm.app.workspace import Workspace, pid_alive, read_json
from ldm.errors import UserError
from ldm.utils import atomic_write_json, set_runtime_defaults

JOB_FILE = "job.json"


@dataclass
class Phase:
    """One command of a job: ``name`` is shown to the user (e.g. "prepare"), ``argv`` is run as is."""

    name: str
    argv: list[str]
    folder: str = ""  # the folder this command writes (its metrics.jsonl shows its progress); "" = none


class JobManager:
    """Starts, watches and stops the single training job of a workspace; holds no state but the job file."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.job_file = workspace.app_dir / JOB_FILE

    def current(self) -> dict[str, Any] | None:
        """The last job (running or not) as recorded in the job file, or None; ``run`` and ``log`` absolute. A job
        whose worker died without recording an end (killed, machine rebooted) is reported with state "failed"."""
        job = self._read()
        if job is None:
            return None
        if job.get("state") == "running" and not pid_alive(job.get("pid")):
            # the worker writes its end state before exiting; reaching here means it was killed from outside
            time.sleep(0.2)
            job = self._read() or job
            if job.get("state") == "running" and not pid_alive(job.get("pid")):
                job = _update(
                    self.job_file,
                    state="failed",
                    message="the worker process ended without recording a result (killed?); see the log",
                )
        return self._absolute(job)

    def _read(self) -> dict[str, Any] | None:
        job = read_json(self.job_file)
        return job if isinstance(job, dict) else None

    def _absolute(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job with its ``run`` and ``log`` as absolute paths (recorded relative to the workspace)."""
        job = dict(job)
        for key in ("run", "log"):
            if job.get(key):
                job[key] = str(self.workspace.root / job[key])
        return job

    def is_running(self) -> bool:
        job = self.current()
        return bool(job and job.get("state") == "running")

    def start(self, run: str | Path, phases: list[Phase], log: str | Path, info: dict[str, Any] | None = None) -> dict:
        """Start a worker that runs ``phases`` in order, output appended to ``log``; refuses while a job runs.

        ``run`` is the run folder the job trains into (shown by the app, used by Resume); ``info`` is stored in the
        job file as is (e.g. the settings the job was started with).
        """
        if not phases:
            raise UserError("nothing to run: the job has no phases")
        job = self.current()
        if job and job.get("state") == "running":
            raise UserError(
                f"a job is already running ({job.get('phase')} of {job.get('run')}); stop it before starting another"
            )
        log = Path(log)
        log.parent.mkdir(parents=True, exist_ok=True)
        job = {
            "run": self.workspace.rel(run),
            "log": self.workspace.rel(log),
            "phases": [asdict(p) for p in phases],
            "phase_index": 0,
            "phase": phases[0].name,
            "state": "running",
            "pid": None,
            "child_pid": None,
            "returncode": None,
            "message": "starting",
            "started": time.time(),
            "ended": None,
            "info": info or {},
        }
        atomic_write_json(self.job_file, job)
        with open(log, "ab") as f:
            f.write(f"\n=== job started {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
        # own session: the worker survives the app (Ctrl+C in the app's terminal, app restart) and the app's
        # signals never reach the trainer by accident
        proc = subprocess.Popen(
            [sys.executable, "-m", "ldm.app.jobs", "run", str(self.job_file)],
            cwd=self.workspace.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(log, "ab"),  # noqa: SIM115 - the worker owns it from here
            start_new_session=True,
        )
        self._proc = proc  # reaped by stop()/wait() when started from this process (avoids a zombie)
        job["pid"] = proc.pid
        # the worker also writes its pid; writing it here closes the gap before it starts up
        current = self._read() or job
        current["pid"] = proc.pid
        atomic_write_json(self.job_file, current)
        return self._absolute(current)

    def stop(self) -> dict[str, Any]:
        """Ask the running job to stop safely (SIGINT to the worker, which forwards it to the running command)."""
        job = self.current()
        if not job or job.get("state") != "running":
            raise UserError("no job is running")
        try:
            os.kill(int(job["pid"]), signal.SIGINT)
        except ProcessLookupError:
            raise UserError("the job's worker process is gone; reload to see its last state") from None
        # recorded, so every view of the job says "stopping" until the worker records the end
        return self._absolute(_update(self.job_file, stop_requested=time.time()))

    def wait(self, timeout: float = 60.0) -> dict[str, Any] | None:
        """Block until the job is no longer running (for tests and scripts); returns the final job record."""
        deadline = time.monotonic() + timeout
        proc = getattr(self, "_proc", None)
        while time.monotonic() < deadline:
            if proc is not None:
                proc.poll()
            job = self.current()
            if not job or job.get("state") != "running":
                return job
            time.sleep(0.1)
        raise TimeoutError(f"job still running after {timeout} s")


# ---------------------------------------------------------------------------------------------------------------------
# the worker


def _update(job_file: Path, **changes: Any) -> dict[str, Any]:
    job = read_json(job_file) or {}
    job.update(changes)
    atomic_write_json(job_file, job)
    return job


def run_worker(job_file: Path) -> int:
    """Run the phases of the job file one after another; SIGINT/SIGTERM stop after forwarding to the running one."""
    job_file = Path(job_file)
    job = _update(job_file, pid=os.getpid(), message="running")
    stop = {"requested": False}
    child: dict[str, subprocess.Popen | None] = {"proc": None}

    def on_signal(signum: int, frame: Any) -> None:
        if not stop["requested"]:
            _update(job_file, stop_requested=time.time())  # every view says "stopping" until the end is recorded
        stop["requested"] = True
        proc = child["proc"]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the trainer's safe stop: finish the step, save, exit 0

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    log_path = Path(job["log"])
    phases = job["phases"]
    for i, phase in enumerate(phases):
        if stop["requested"]:  # stopped between two phases: the next ones are skipped
            _update(job_file, state="stopped", ended=time.time(), message=f"stopped before {phase['name']}")
            return 0
        _update(job_file, phase_index=i, phase=phase["name"], message=f"{phase['name']} running")
        with open(log_path, "ab") as log:
            log.write(f"\n=== {phase['name']}: {' '.join(phase['argv'])} ===\n".encode())
            log.flush()
            proc = subprocess.Popen(phase["argv"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            child["proc"] = proc
            _update(job_file, child_pid=proc.pid)
            if stop["requested"]:  # a stop that arrived between the check and Popen
                proc.send_signal(signal.SIGINT)
            while True:
                try:
                    rc = proc.wait()
                    break
                except InterruptedError:  # pragma: no cover - wait() retries on EINTR itself since 3.5
                    continue
        child["proc"] = None
        if rc != 0 and not stop["requested"]:
            _update(
                job_file,
                state="failed",
                returncode=rc,
                ended=time.time(),
                message=f"{phase['name']} failed (exit code {rc}); see the log for the reason",
            )
            return rc
        if stop["requested"]:
            _update(
                job_file,
                state="stopped",
                returncode=rc,
                ended=time.time(),
                message=f"stopped during {phase['name']}" + ("" if rc == 0 else f" (exit code {rc})"),
            )
            return 0
    _update(job_file, state="finished", returncode=0, ended=time.time(), message="finished")
    return 0


def main(argv: list[str] | None = None) -> int:
    set_runtime_defaults()  # inherited by the phases it runs
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "run":
        print("usage: python -m ldm.app.jobs run JOBFILE", file=sys.stderr)
        return 2
    return run_worker(Path(argv[1]))


if __name__ == "__main__":
    raise SystemExit(main())
