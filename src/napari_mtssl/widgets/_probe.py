"""Event-loop stall probe: how long the GUI stayed frozen while something ran.

A 10 ms ``QTimer`` records the gap between consecutive ticks. A responsive event loop keeps every
gap near the interval; the largest gap minus the interval is the longest stall a user would have
felt (a mouse click waits at most that long). Benchmarks and the widget tests reuse it.
"""

from __future__ import annotations

import time

from qtpy.QtCore import QObject, QTimer


class StallProbe(QObject):
    """Measure the longest event-loop stall, in milliseconds, between ``start()`` and ``stop()``.

    Use as a context manager around code that runs the event loop (``qtbot.waitUntil``,
    ``qtbot.waitSignal``); code that blocks the loop without spinning it cannot be measured from
    inside, only after it returns (the next tick sees the whole gap).
    """

    def __init__(self, interval_ms: int = 10, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.interval_ms = int(interval_ms)
        self._timer = QTimer(self)
        self._timer.setInterval(self.interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last: float | None = None
        self.max_gap_ms = 0.0
        self.ticks = 0

    @property
    def max_stall_ms(self) -> float:
        """Longest gap beyond the timer interval (0 when the loop never fell behind)."""
        return max(0.0, self.max_gap_ms - self.interval_ms)

    def start(self) -> StallProbe:
        self.max_gap_ms = 0.0
        self.ticks = 0
        self._last = time.perf_counter()
        self._timer.start()
        return self

    def stop(self) -> float:
        """Stop ticking and return the longest stall in milliseconds."""
        self._tick()  # a stall that is still going on when we stop counts too
        self._timer.stop()
        self._last = None
        return self.max_stall_ms

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.max_gap_ms = max(self.max_gap_ms, (now - self._last) * 1000.0)
            self.ticks += 1
        self._last = now

    def __enter__(self) -> StallProbe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
