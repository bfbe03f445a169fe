"""A stage counter for long pipelines: ``fit [2/3] evaluating on the test set ...`` on stderr.

Every stage prints one line when it starts and one with its elapsed time when it ends; ``quiet``
(and every process but rank 0 of a multi-process run) prints nothing::

    stages = Stages(3, "fit", quiet=False)
    with stages("training"):
        ...
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Optional

__all__ = ["Stages"]


class Stages:
    """Counts ``total`` stages of the pipeline ``label``; use as ``with stages("what"): ...``.

    Args:
        total: how many stages the pipeline will run.
        label: the pipeline's name, printed first.
        quiet: print nothing.
        stream: where to print (default: ``sys.stderr`` at the time of printing).
    """

    def __init__(self, total: int, label: str, *, quiet: bool = False, stream: Optional[IO[str]] = None):
        self.total, self.label, self.quiet, self.stream = int(total), label, bool(quiet), stream
        self.done = 0
        self.times: dict[str, float] = {}

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream or sys.stderr, flush=True)

    def warn(self, text: str) -> None:
        """A warning line (printed even when quiet: it is not progress)."""
        print(f"bayesdistill {self.label}: warning: {text}", file=self.stream or sys.stderr, flush=True)

    @contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        self.done += 1
        head = f"{self.label} [{self.done}/{max(self.total, self.done)}]"
        self.say(f"{head} {what} ...")
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.times[what] = elapsed
        self.say(f"{head} {what}: done in {elapsed:.1f} s")
