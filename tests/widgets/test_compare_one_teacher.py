"""The Compare dock with a single teacher: no map of zeros, and a ranking that says why.

No model is trained: the comparison is built as ``api.compare`` would return it for a run with
one teacher (its disagreement all zeros)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _comparison(shape, teachers):
    from napari_mtssl.api import Comparison
    from napari_mtssl.training.prediction.inference import slice_scores

    masks = {name: np.zeros(shape, np.uint8) for name in ["student", *teachers]}
    dis = np.zeros(shape, np.float32)
    if len(teachers) > 1:
        dis[2] = 0.5  # the teachers disagree on slice 2 only
    return Comparison(
        labels=masks,
        teacher_mean=None,
        disagreement=dis,
        slice_scores=slice_scores(dis),
        dice={name: None for name in masks},
        teachers=list(teachers),
    )


def _show(qtbot, dock, sid, comparison):
    """Show a comparison and wait until its last layer is in (it is added over several turns)."""
    with qtbot.waitSignal(dock.comparison_ready, timeout=30_000):
        dock.show_comparison(sid, comparison)


def test_one_teacher_explains_instead_of_ranking_zeros(sample_docks, qtbot):
    from napari_mtssl.widgets._state import find_layer, model_layer_name

    d = sample_docks
    ws = d.session.workspace
    sid = ws.scan_ids()[0]
    shape = ws.record(sid).shape
    v = d.viewer
    dis_name = model_layer_name(sid, "disagreement")

    _show(qtbot, d.compare, sid, _comparison(shape, ["teacher:sdm", "teacher:inpaint"]))
    assert find_layer(v, dis_name) is not None
    assert d.compare.ranked.count() == shape[0]
    assert "slice   2" in d.compare.ranked.item(0).text()

    # Compared again with one teacher: the stale map goes, one note replaces the zeros
    _show(qtbot, d.compare, sid, _comparison(shape, ["teacher:sdm"]))
    assert find_layer(v, dis_name) is None
    assert d.compare.ranked.count() == 1
    note = d.compare.ranked.item(0)
    assert "One teacher in this run (sdm)" in note.text()
    assert "0.000" not in note.text()
    d.compare.ranked.itemClicked.emit(note)  # a note is not a slice: clicking it does nothing
    assert d.compare.status.text().startswith(sid)


def test_before_any_student_the_first_model_is_the_one_shown(sample_docks, qtbot):
    from napari_mtssl.api import Comparison
    from napari_mtssl.widgets._state import find_layer, model_layer_name

    d = sample_docks
    sid = d.session.workspace.scan_ids()[0]
    shape = d.session.workspace.record(sid).shape
    only = Comparison(
        labels={"baseline": np.zeros(shape, np.uint8)},
        teacher_mean=None,
        disagreement=None,
        slice_scores=None,
        dice={"baseline": None},
        teachers=[],
    )
    _show(qtbot, d.compare, sid, only)
    assert find_layer(d.viewer, model_layer_name(sid, "baseline")).visible
