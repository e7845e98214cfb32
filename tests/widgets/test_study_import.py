"""The Study dock's import and a click in its table: files read off the GUI thread, layers
added a turn of the event loop apart, a spare worker started while the import runs."""

from __future__ import annotations

import pytest

from tests.test_api import make_dataset

pytestmark = [pytest.mark.gui, pytest.mark.spare_worker]


def test_import_shows_the_first_scan_with_its_labels(docks, tmp_path, qtbot):
    from napari_mtssl.widgets._state import find_layer, scan_layer_name

    data = make_dataset(tmp_path / "data")
    study = docks.study
    worker = study.open_dataset_folder(str(data), str(tmp_path / "ws"), labelled=1)
    assert worker is not None  # returned at once: the import runs in the background
    assert docks.session.jobs._spare is not None  # a job worker gets ready meanwhile
    qtbot.waitUntil(lambda: docks.session.workspace is not None, timeout=60_000)
    sid = docks.session.workspace.scan_ids()[0]
    qtbot.waitUntil(lambda: f"{sid}_labels" in docks.viewer.layers, timeout=30_000)
    image = find_layer(docks.viewer, scan_layer_name(sid))
    labels = docks.viewer.layers[f"{sid}_labels"]
    assert image.data.shape == labels.data.shape
    assert labels.data.max() > 0  # patient001 kept its labels
    # the dock's line said how far it was; napari's activity indicator (40 % of a core while it
    # animates, in software rendering) never started
    assert "Importing" not in study.ws_label.text()
    indicator = docks.viewer.window._qt_window._activity_dialog._toggleButton
    assert not indicator._inProgressIndicator.isVisible()


def test_a_table_click_shows_its_scan_and_hides_the_others(docks, tmp_path, qtbot):
    data = make_dataset(tmp_path / "data")
    study = docks.study
    ws = study.open_dataset_folder(str(data), str(tmp_path / "ws"), labelled=1, wait=True)
    ids = ws.scan_ids()
    qtbot.waitUntil(lambda: ids[0] in docks.viewer.layers, timeout=30_000)
    row = next(r for r in range(study.table.rowCount()) if study.table.item(r, 0).text() == ids[1])
    worker = study.show_workspace_scan_soon(ids[1])
    assert worker is not None  # read in a thread: the click returns at once
    assert ids[1] not in docks.viewer.layers
    qtbot.waitUntil(lambda: ids[1] in docks.viewer.layers, timeout=30_000)
    qtbot.waitUntil(lambda: not docks.viewer.layers[ids[0]].visible, timeout=10_000)
    assert docks.viewer.layers[ids[1]].visible
    assert docks.viewer.layers.selection.active is docks.viewer.layers[ids[1]]
    # shown already: a second click just brings it to the front, with no thread
    study._show_scan_row(row, 0)
    assert docks.viewer.layers[ids[1]].visible
