"""Progress bars that suit where the output goes.

    from ldm.progress import progress_bar
    for batch in progress_bar(loader, desc="encoding", unit="img"): ...

In a terminal (and in a notebook) this is tqdm as usual: one bar redrawn in place. When the output is not a terminal
(CI logs, ``ldm train ... | tee log``, the app's job log), tqdm's in-place redraws would be one carriage-return
separated update per refresh; instead the bar is printed as a plain ASCII line at most every :data:`LOG_INTERVAL`
seconds, also when the caller asks for redraws (``set_postfix`` at every step), plus once at the start and at the
end, each line ending in a newline.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

LOG_INTERVAL = 5.0  # seconds between progress lines when the output is not a terminal


class _Lines:
    """A text stream for tqdm that turns its carriage-return redraws into whole lines: each non-blank segment of a
    write (trailing padding removed) becomes one newline-terminated line; blank ones (tqdm clearing a bar) vanish."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, s: str) -> int:
        for segment in s.replace("\r", "\n").split("\n"):
            if segment.strip():
                self.stream.write(segment.rstrip() + "\n")
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


@functools.cache
def _line_bar() -> type[tqdm]:
    from tqdm import std

    class LineBar(std.tqdm):
        """tqdm that redraws at most every ``mininterval`` seconds, also when a redraw is asked for (``set_postfix``,
        ``set_description``, ``refresh``), since each redraw is a line; the last one, on ``close``, always shows."""

        _last_line = -math.inf

        def refresh(self, nolock: bool = False, lock_args: tuple | None = None) -> bool | None:
            if not self.disable:
                now = self._time()  # tqdm's clock, the one its own interval check uses
                if now - self._last_line < self.mininterval:
                    return False
                self._last_line = now
            return super().refresh(nolock=nolock, lock_args=lock_args)

    return LineBar


def progress_bar(iterable: Iterable | None = None, **tqdm_kwargs: Any) -> tqdm:
    """``tqdm(iterable, **tqdm_kwargs)`` (the same arguments and object) that writes newline-terminated ASCII lines
    at most every :data:`LOG_INTERVAL` seconds when its ``file`` (default ``sys.stderr``) is not a terminal.

    An explicit ``mininterval`` is kept in both cases.
    """
    from tqdm import auto, std  # tqdm.auto only here: it costs a notebook check

    stream = tqdm_kwargs.get("file") or sys.stderr
    in_notebook = auto.notebook_tqdm is not std.tqdm  # tqdm.auto draws a widget there
    if _is_terminal(stream) or in_notebook:
        return auto.tqdm(iterable, **tqdm_kwargs)
    settings = {"mininterval": LOG_INTERVAL, **tqdm_kwargs}
    settings.update(file=_Lines(stream), ascii=True, dynamic_ncols=False)
    return _line_bar()(iterable, **settings)
