"""Progress bars: tqdm's in-place bar in a terminal, a few newline-terminated lines anywhere else."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest

from ldm.progress import LOG_INTERVAL, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _loop(n: int, extra: str = "") -> str:
    """Python code that runs a bar over ``range(n)`` with the default output (stderr)."""
    return f"from ldm.progress import progress_bar\nfor _ in progress_bar(range({n}), desc='encoding'{extra}): pass\n"


def _lines(text: str) -> list[str]:
    assert "\r" not in text and text.endswith("\n")
    return text.splitlines()


def test_not_a_terminal_prints_a_line_every_interval():
    out = io.StringIO()
    for _ in progress_bar(range(40), desc="encoding", unit="img", file=out, mininterval=0.05):
        time.sleep(0.01)  # 0.4 s: about 8 intervals
    lines = _lines(out.getvalue())
    assert 3 <= len(lines) <= 12 and all(ln.startswith("encoding:") for ln in lines)
    assert "0/40" in lines[0] and "40/40" in lines[-1] and "100%|##########|" in lines[-1]  # plain ASCII


def test_not_a_terminal_limits_asked_for_redraws_too():
    """A caller that sets a postfix at every step (the trainers do) still gets a line per interval, not per step."""
    out = io.StringIO()
    with progress_bar(total=40, desc="training", file=out, mininterval=0.1) as bar:
        for step in range(40):
            time.sleep(0.01)
            bar.n = step + 1  # train-vae moves the bar itself and relies on the postfix to redraw it
            bar.set_postfix_str(f"step {step + 1}")
    lines = _lines(out.getvalue())
    assert 2 <= len(lines) <= 8 and "40/40" in lines[-1] and "step 40" in lines[-1]


def test_not_a_terminal_default_is_start_and_end_for_a_quick_loop():
    assert LOG_INTERVAL >= 2
    out = io.StringIO()
    with progress_bar(total=1000, desc="steps", file=out, dynamic_ncols=True) as bar:
        for _ in range(1000):
            bar.update(1)
    lines = _lines(out.getvalue())
    assert len(lines) == 2 and "0/1000" in lines[0] and "1000/1000" in lines[1]


def test_disabled_bar_writes_nothing():
    out = io.StringIO()
    for _ in progress_bar(range(5), file=out, disable=True):
        pass
    assert out.getvalue() == ""


def test_stderr_to_a_pipe_gets_lines_not_carriage_returns():
    res = subprocess.run([sys.executable, "-c", _loop(300)], capture_output=True, text=True, timeout=120, check=True)
    lines = _lines(res.stderr)
    assert len(lines) == 2 and "300/300" in lines[-1]


def test_a_terminal_gets_the_usual_bar():
    out = Terminal()
    for _ in progress_bar(range(20), desc="encoding", file=out, mininterval=0):
        pass
    text = out.getvalue()
    assert text.count("\r") >= 20  # redrawn in place, once per step with mininterval=0
    assert "\n" not in text.rstrip("\n") and "20/20" in text.rsplit("\r", 1)[-1]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_a_real_terminal_gets_the_usual_bar():
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 24 rows, 80 columns
    try:
        subprocess.run([sys.executable, "-c", _loop(5, ", mininterval=0")], stderr=slave, timeout=120, check=True)
    finally:
        os.close(slave)
    data = b""
    try:
        while chunk := os.read(master, 4096):
            data += chunk
    except OSError:  # EIO: the terminal's other end is closed, all read
        pass
    finally:
        os.close(master)
    assert data.count(b"\r") >= 6 and b"5/5" in data and "█".encode() in data  # redrawn in place, unicode blocks
