"""Keys of the correction dock: proposals, accepting, napari's tools on the corrections layer.

No model is needed: the dock's edit layer is shown from a given mask (as the student's
prediction would be) and the proposals list is filled as the ranking would fill it.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from qtpy.QtCore import Qt

pytestmark = pytest.mark.gui


def _canvas(viewer):
    return viewer.window._qt_viewer.canvas.native


def _press(qtbot, viewer, key, modifier=Qt.KeyboardModifier.NoModifier):
    """A real key press on napari's canvas (Qt -> vispy -> napari's keymap handler)."""
    qtbot.keyClick(_canvas(viewer), key, modifier)


def _editing(d):
    ws = d.session.workspace
    sid = ws.scan_ids()[0]
    mask = np.zeros(ws.record(sid).shape, np.uint8)
    d.correct._show_edit(sid, mask)
    found = [SimpleNamespace(scan=sid, z=z, reason=f"reason {z}") for z in (2, 5, 1)]
    d.correct.show_proposals(found)
    return ws, sid


def test_keys_walk_the_proposals_accept_and_choose_tools(sample_docks, qtbot):
    from napari.utils.key_bindings import coerce_keybinding

    from napari_mtssl.widgets._state import current_slice
    from napari_mtssl.widgets.correct import SHORTCUTS, edit_layer_name

    d = sample_docks
    v = d.viewer
    ws, sid = _editing(d)
    edit = v.layers[edit_layer_name(sid)]
    image = v.layers[sid]
    bound = {coerce_keybinding(k) for k, _w, _a in SHORTCUTS}
    assert bound <= set(v.keymap)
    for key, _what, _action in SHORTCUTS:  # every key is in the help
        assert key in d.correct.keys_help.toolTip()
    assert "Key: A" in d.correct.accept_slice_button.toolTip()

    # N / Shift-N: through the proposals in their order, the corrections layer selected
    v.layers.selection.active = image
    _press(qtbot, v, Qt.Key.Key_N)
    assert current_slice(v, edit) == 2 and d.correct.proposals.currentRow() == 0
    assert v.layers.selection.active is edit
    _press(qtbot, v, Qt.Key.Key_N)
    assert current_slice(v, edit) == 5
    _press(qtbot, v, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    assert current_slice(v, edit) == 2
    _press(qtbot, v, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)  # the first: stays
    assert current_slice(v, edit) == 2

    # A: the slice on screen, as painted, is stored as corrected
    painted = np.array(edit.data)
    painted[2, 10:20, 10:20] = 1
    edit.data = painted
    assert ws.slice_status(sid)[2] != "corrected"
    with qtbot.waitSignal(d.correct.accepted, timeout=10_000) as got:
        _press(qtbot, v, Qt.Key.Key_A)
    assert got.args == [sid, [2]]
    assert ws.slice_status(sid)[2] == "corrected"
    np.testing.assert_array_equal(ws.labels(sid)[2], painted[2])
    assert ws.provenance(sid, 2)[-1]["by"] == "user"

    # P / E / F with the scan's image selected: the corrections layer and the tool
    for key, mode in ((Qt.Key.Key_E, "erase"), (Qt.Key.Key_F, "fill"), (Qt.Key.Key_P, "paint")):
        v.layers.selection.active = image
        _press(qtbot, v, key)
        assert v.layers.selection.active is edit
        assert edit.mode == mode
    # with the corrections layer selected napari's own keys do the same
    _press(qtbot, v, Qt.Key.Key_E)
    assert edit.mode == "erase"


def test_keys_are_unbound_when_the_dock_closes(sample_docks):
    from napari.utils.key_bindings import coerce_keybinding

    from napari_mtssl.widgets.all_steps import AllStepsWidget
    from napari_mtssl.widgets.correct import SHORTCUTS

    d = sample_docks
    keys = {coerce_keybinding(k) for k, _w, _a in SHORTCUTS}
    assert keys <= set(d.viewer.keymap)
    outer = d.correct
    while not isinstance(outer, AllStepsWidget):
        outer = outer.parentWidget()
    d.viewer.window.remove_dock_widget(outer)
    assert not keys & set(d.viewer.keymap)
    assert d.correct._keys == {}


def test_a_key_someone_else_bound_is_left_alone(make_napari_viewer):
    from napari_mtssl.widgets.correct import CorrectWidget

    viewer = make_napari_viewer()

    def mine(_viewer):
        return None

    viewer.bind_key("A", mine)
    dock = CorrectWidget(viewer)
    assert "A" not in dock._keys and "N" in dock._keys
    dock.close()
    from napari.utils.key_bindings import coerce_keybinding

    assert viewer.keymap[coerce_keybinding("A")] is mine
    assert coerce_keybinding("N") not in viewer.keymap
