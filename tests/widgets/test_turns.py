"""GUI work split over turns of the event loop: one step per turn, in order, droppable."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


def test_steps_run_one_per_turn_in_order(qtbot):
    from napari_mtssl.widgets._turns import run_in_turns

    ran: list[int] = []
    run_in_turns([lambda i=i: ran.append(i) for i in range(4)])
    assert ran == [0]  # the first now, the rest later: the viewer redraws between them
    qtbot.waitUntil(lambda: len(ran) == 4, timeout=5_000)
    assert ran == [0, 1, 2, 3]


def test_steps_left_are_dropped_when_no_longer_wanted(qtbot):
    from napari_mtssl.widgets._turns import run_in_turns

    ran: list[str] = []
    wanted = {"old": True}
    run_in_turns([lambda i=i: ran.append(f"old{i}") for i in range(5)], alive=lambda: wanted["old"])
    wanted["old"] = False  # a newer request replaced this one
    run_in_turns([lambda i=i: ran.append(f"new{i}") for i in range(2)])
    qtbot.waitUntil(lambda: "new1" in ran, timeout=5_000)
    qtbot.wait(50)
    assert ran == ["old0", "new0", "new1"]


def test_a_failing_step_ends_the_sequence_and_is_reported(qtbot):
    from napari_mtssl.widgets._turns import run_in_turns

    ran: list[int] = []
    errors: list[BaseException] = []

    def boom() -> None:
        raise ValueError("scan.nii.gz: no such file")

    run_in_turns([lambda: ran.append(0), boom, lambda: ran.append(2)], on_error=errors.append)
    qtbot.waitUntil(lambda: bool(errors), timeout=5_000)
    qtbot.wait(50)
    assert ran == [0]
    assert "scan.nii.gz" in str(errors[0])
