"""Progress of long SAE runs (harvest, training): a bar on a terminal, timed lines everywhere else.

On a terminal :class:`Progress` shows a tqdm bar. When stderr is not a terminal (a log file, CI, ``nohup``) a
bar would print nothing useful, so instead one line is logged every ``every`` seconds, e.g.::

    harvest blocks.6.hook_resid_post: 40960/50000 tok (81.9%), 2150 tok/s, ~4 s left

The lines, and the one-line notices of :func:`notice` (a run resuming, a store being extended), go to the
logger ``credo.progress``. The ``credo`` command sets that logger to INFO, so they appear at its default
verbosity; a Python caller sees them once it configures logging at INFO.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm.auto import tqdm

progress_log = logging.getLogger("credo.progress")


def notice(message: str, *args: Any) -> None:
    """One line a user should see at the default verbosity of the ``credo`` command (resume, extension)."""
    progress_log.info(message, *args)


def on_terminal() -> bool:
    """Whether stderr, where the bar and the log lines go, is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Counts work done towards ``total``; a tqdm bar on a terminal, a log line every ``every`` s otherwise.

    ``enabled=False`` shows nothing (another rank, or the caller asked for quiet). ``initial`` is the work
    already done by an earlier run (a resume): rates count only this run's work.
    """

    def __init__(
        self, total: int, what: str, unit: str, initial: int = 0, every: float = 30.0, enabled: bool = True
    ):
        self.total, self.what, self.unit, self.every = total, what, unit, every
        self.done = self.start = initial
        self.t0 = self.last = time.monotonic()
        self.postfix = ""
        terminal = on_terminal()
        self.bar = tqdm(
            total=total, initial=min(initial, total), unit=unit, desc=what, mininterval=1.0,
            disable=not (enabled and terminal),
        )  # fmt: skip
        self.lines = enabled and not terminal

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        """``n`` more units done; ``postfix`` (e.g. the current L0 and FVU) is shown with the count."""
        self.done += n
        if postfix is not None:
            self.postfix = postfix
            self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(n)
        now = time.monotonic()
        if self.lines and now - self.last >= self.every and self.done < self.total:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = max(now - self.t0, 1e-9)
        rate = (self.done - self.start) / elapsed
        left = f", ~{_duration((self.total - self.done) / rate)} left" if rate > 0 else ""
        share = 100.0 * self.done / self.total if self.total else 100.0
        extra = f"; {self.postfix}" if self.postfix else ""
        progress_log.info(
            "%s: %d/%d %s (%.1f%%), %.4g %s/s%s%s",
            self.what, self.done, self.total, self.unit, share, rate, self.unit, left, extra,
        )  # fmt: skip

    def close(self, finished: bool = True) -> None:
        """Close the bar; without one, log a last line with the total time (if the work ``finished``)."""
        self.bar.close()
        if self.lines and finished:
            now = time.monotonic()
            extra = f"; {self.postfix}" if self.postfix else ""
            progress_log.info(
                "%s: done, %d/%d %s in %s%s",
                self.what, self.done, self.total, self.unit, _duration(now - self.t0), extra,
            )  # fmt: skip
            self.lines = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(finished=exc_type is None)
