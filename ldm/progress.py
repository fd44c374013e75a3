"""Progress bars that suit where the output goes.

    from ldm.progress import progress_bar
    for batch in progress_bar(loader, desc="encoding", unit="img"): ...

In a terminal (and in a notebook) this is tqdm as usual: one bar redrawn in place. When the output is not a terminal
(CI logs, ``ldm train ... | tee log``, the app's job log), tqdm's in-place redraws would be one carriage-return
separated update per refresh; instead the bar is printed as a plain ASCII line every :data:`LOG_INTERVAL` seconds
(and once at the start and at the end), each ending in a newline.
"""

from __future__ import annotations

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


def progress_bar(iterable: Iterable | None = None, **tqdm_kwargs: Any) -> tqdm:
    """``tqdm(iterable, **tqdm_kwargs)`` (the same arguments and object) that writes newline-terminated ASCII lines
    at most every :data:`LOG_INTERVAL` seconds when its ``file`` (default ``sys.stderr``) is not a terminal.

    An explicit ``mininterval`` is kept in both cases.
    """
    from tqdm import auto, std

    stream = tqdm_kwargs.get("file") or sys.stderr
    in_notebook = auto.notebook_tqdm is not std.tqdm  # tqdm.auto draws a widget there
    if _is_terminal(stream) or in_notebook:
        return auto.tqdm(iterable, **tqdm_kwargs)
    settings = {"mininterval": LOG_INTERVAL, **tqdm_kwargs}
    settings.update(file=_Lines(stream), ascii=True, dynamic_ncols=False)
    return std.tqdm(iterable, **settings)
