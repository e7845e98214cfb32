"""Proposals on a large study stay bounded: fg_random draws slices at random and predicts only
the scans it reaches (the reference masks stand in for the student's here, as in simulations)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mtssl import active

SLICES = 10
SHOWING = range(3, 7)  # the slices of every scan where the structures are


class Study:
    """What ``active`` reads of a workspace: training scans and each slice's status."""

    def __init__(self, n: int, labelled: dict[str, list[int]] | None = None) -> None:
        self.ids = [f"scan{i:03d}" for i in range(n)]
        self.labelled = labelled or {}

    def scan_ids(self, split: str | None = None) -> list[str]:
        return list(self.ids)

    def slice_status(self, sid: str) -> list[str]:
        done = set(self.labelled.get(sid, []))
        return ["annotated" if z in done else "unlabelled" for z in range(SLICES)]


def truth_of(study: Study) -> dict[str, np.ndarray]:
    out = {}
    for sid in study.ids:
        mask = np.zeros((SLICES, 4, 4), np.uint8)
        mask[list(SHOWING), 1:3, 1:3] = 1
        out[sid] = mask
    return out


def drawn(study: Study, k: int, max_scans: int | None, seed: int = 0):
    seen: list[str] = []
    got = active.propose(
        study,
        k,
        "fg_random",
        truth=truth_of(study),
        seed=seed,
        max_scans=max_scans,
        progress=lambda i, n, sid: seen.append(sid),
    )
    return got, [s for s in seen if s]


def test_fg_random_predicts_only_the_scans_its_draw_reaches():
    study = Study(150, labelled={"scan000": [4]})
    got, predicted = drawn(study, 10, max_scans=12)
    assert len(got) == 10 and len(set((c.scan, c.z) for c in got)) == 10
    assert all(c.z in SHOWING for c in got)  # slices showing the structures only
    assert ("scan000", 4) not in {(c.scan, c.z) for c in got}  # never a labelled slice
    assert len(predicted) <= 12 and {c.scan for c in got} <= set(predicted)
    assert all("scans predicted" in c.reason for c in got)
    # spread over scans, as a draw over the whole study is: no scan gives more than a few
    assert max(sum(c.scan == s for c in got) for s in predicted) <= 4
    assert drawn(study, 10, max_scans=12) == (got, predicted)  # the seed decides
    assert drawn(study, 10, max_scans=12, seed=1)[0] != got


def test_fg_random_stops_predicting_once_it_has_enough():
    study = Study(150)
    _, few = drawn(study, 2, max_scans=50)
    _, more = drawn(study, 20, max_scans=50)
    assert 1 <= len(few) < len(more) <= 50


def test_a_small_study_gives_what_it_has_and_unbounded_predicts_every_scan():
    study = Study(3)
    got, predicted = drawn(study, 50, max_scans=12)
    assert len(got) == 3 * len(SHOWING) and sorted(predicted) == study.ids
    assert len(drawn(Study(20), 5, max_scans=None)[1]) == 20


def test_max_scans_must_be_positive():
    with pytest.raises(ValueError, match="max_scans"):
        drawn(Study(3), 5, max_scans=0)
