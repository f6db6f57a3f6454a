"""A progress bar for a run made of phases of roughly known length.

Each phase says how long it should take; the bar moves with the time spent in it (never past
its end until the next phase starts). On a terminal it redraws one line; elsewhere (a log, a
test) it prints a line as each phase starts.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

WIDTH = 30


class Progress:
    def __init__(self, total_seconds: float, stream: TextIO = sys.stderr) -> None:
        self.total = total_seconds
        self.stream = stream
        self.interactive = stream.isatty()
        self.started = self.phase_started = time.monotonic()
        self.done = 0.0  # expected seconds of the phases finished
        self.phase, self.expected = "", 0.0

    def start(self, phase: str, expected_seconds: float) -> None:
        self.done += self.expected
        self.phase, self.expected = phase, expected_seconds
        self.phase_started = time.monotonic()
        if self.interactive:
            self.draw()
        else:
            print(f"[{self.percent():3.0f}%] {phase}", file=self.stream, flush=True)

    def percent(self) -> float:
        into = min(time.monotonic() - self.phase_started, 0.95 * self.expected)
        return min(100.0, 100 * (self.done + into) / self.total) if self.total else 100.0

    async def redraw(self) -> None:
        """Keep the bar moving while the run goes on (cancel it at the end)."""
        while self.interactive:
            self.draw()
            await asyncio.sleep(0.5)

    def finish(self) -> None:
        self.done, self.phase, self.expected = self.total, "done", 0.0
        if self.interactive:
            self.draw()
            print(file=self.stream)

    def draw(self) -> None:
        percent = self.percent()
        filled = round(WIDTH * percent / 100)
        minutes, seconds = divmod(int(time.monotonic() - self.started), 60)
        line = f"[{'#' * filled}{'.' * (WIDTH - filled)}] {percent:3.0f}%  {minutes}:{seconds:02d}"
        self.stream.write(f"\r{line}  {self.phase[:60]:<60}")
        self.stream.flush()
