"""Work for the GUI thread, split over turns of the Qt event loop.

Adding a napari layer costs tens of milliseconds (its visual, its colormap, its controls); a
comparison adds one per model. Done in one callback, that holds the viewer for the sum; done one
step per turn, the viewer redraws and answers clicks between steps, so the longest stall is the
slowest single step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from napari.utils import notifications
from qtpy.QtCore import QTimer


def run_in_turns(
    steps: Iterable[Callable[[], Any]],
    alive: Callable[[], bool] = lambda: True,
    on_error: Callable[[BaseException], Any] | None = None,
) -> None:
    """Run ``steps`` in order, the first now and each next one at the next turn of the event
    loop. ``alive()`` false (the widget closed, a newer request) drops the steps left. A step
    that raises ends the sequence; ``on_error`` gets the exception (else napari shows it)."""
    todo = iter(steps)

    def next_step() -> None:
        if not alive():
            return
        step = next(todo, None)
        if step is None:
            return
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - reported, never raised into Qt's event loop
            if on_error is not None:
                on_error(exc)
            else:
                notifications.show_error(str(exc))
            return
        QTimer.singleShot(0, next_step)

    next_step()
