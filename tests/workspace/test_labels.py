from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pytest

from napari_mtssl.io.scan import LabelError
from napari_mtssl.workspace import SLICE_STATUSES, Workspace, WorkspaceError

from .conftest import make_scan

SHAPE = (4, 6, 5)


def _lab(slices: dict[int, int], dtype: type = np.uint8) -> np.ndarray:
    """A label volume with a small square of class ``v`` on each slice ``z``."""
    lab = np.zeros(SHAPE, dtype)
    for z, v in slices.items():
        lab[z, 1:3, 1:4] = v
    return lab


def _files(ws: Workspace) -> dict[str, bytes]:
    return {
        str(p.relative_to(ws.root)): p.read_bytes()
        for p in sorted(ws.root.rglob("*"))
        if p.is_file() and p.name != "workspace.lock"
    }


def test_empty_store(ws: Workspace) -> None:
    sid = ws.add_scan(make_scan())
    assert SLICE_STATUSES == ("unlabelled", "annotated", "corrected")
    lab = ws.labels(sid)
    assert lab.shape == SHAPE and lab.dtype == np.uint8 and not lab.any()
    assert ws.slice_status(sid) == ["unlabelled"] * 4
    assert ws.labelled_slices(sid) == []
    assert ws.provenance(sid, 0) == []
    assert ws.undo_last(sid) == []


def test_set_labels_default_slices_status_and_provenance(ws: Workspace) -> None:
    sid = ws.add_scan(make_scan())
    lab = _lab({0: 1, 2: 2})
    lab[3] = 0
    assert ws.set_labels(sid, lab, by="alice") == [0, 2]
    assert ws.slice_status(sid) == ["annotated", "unlabelled", "annotated", "unlabelled"]
    assert ws.labelled_slices(sid) == [0, 2]
    np.testing.assert_array_equal(ws.labels(sid), lab)
    (p,) = ws.provenance(sid, 2)
    assert p["status"] == "annotated" and p["by"] == "alice"
    assert p["model"] is None and p["round"] == 0
    assert set(p) == {"status", "by", "model", "round", "time"}
    assert datetime.fromisoformat(p["time"]).utcoffset().total_seconds() == 0
    # files: npz (no pickle) + JSON
    with np.load(ws.root / "labels" / f"{sid}.npz", allow_pickle=False) as npz:
        assert npz["mask"].shape == SHAPE and npz["status"].dtype == np.uint8
    json.loads((ws.root / "labels" / f"{sid}.json").read_text())


def test_only_given_slices_written_and_empty_slice_can_be_labelled(ws: Workspace) -> None:
    sid = ws.add_scan(make_scan())
    lab = _lab({0: 1, 1: 1, 2: 1})
    assert ws.set_labels(sid, lab, slices=[1, 3]) == [1, 3]  # slice 3 empty: "no organ here"
    stored = ws.labels(sid)
    np.testing.assert_array_equal(stored[1], lab[1])
    assert not stored[0].any() and not stored[2].any()
    assert ws.labelled_slices(sid) == [1, 3]
    assert ws.set_labels(sid, np.zeros(SHAPE, np.uint8)) == []  # nothing to write
    assert ws.set_labels(sid, lab, slices=[-1]) == [3]  # negative index like numpy


def test_correction_history_and_undo(ws: Workspace) -> None:
    sid = ws.add_scan(make_scan())
    first = _lab({1: 1, 2: 1})
    ws.set_labels(sid, first, by="alice")
    ws.add_round({"trained": "all"})
    pred = _lab({1: 2, 2: 2, 3: 2})
    ws.set_labels(sid, pred, slices=[2, 3], status="corrected", by="bob", model="student")
    assert ws.slice_status(sid) == ["unlabelled", "annotated", "corrected", "corrected"]
    hist = ws.provenance(sid, 2)
    assert [h["status"] for h in hist] == ["annotated", "corrected"]
    assert hist[-1]["model"] == "student" and hist[-1]["round"] == 1 and hist[-1]["by"] == "bob"
    assert (ws.root / "labels" / "history" / sid / "2.npz").exists()

    assert ws.undo_last(sid) == [2, 3]
    np.testing.assert_array_equal(ws.labels(sid), first)
    assert ws.slice_status(sid) == ["unlabelled", "annotated", "annotated", "unlabelled"]
    assert [h["status"] for h in ws.provenance(sid, 2)] == ["annotated"]
    assert ws.provenance(sid, 3) == []
    assert ws.undo_last(sid) == [1, 2]
    assert not ws.labels(sid).any() and ws.labelled_slices(sid) == []
    assert ws.undo_last(sid) == []
    # the undone state survives reopening, and new writes continue cleanly
    assert Workspace.open(ws.root).labelled_slices(sid) == []
    ws.set_labels(sid, pred, slices=[3], status="corrected")
    assert ws.provenance(sid, 3)[-1]["status"] == "corrected" and len(ws.provenance(sid, 3)) == 1


def test_clear_slices(ws: Workspace) -> None:
    sid = ws.add_scan(make_scan())
    lab = _lab({0: 1, 1: 1})
    ws.set_labels(sid, lab)
    assert ws.clear_slices(sid, [1], by="carol") == [1]
    assert ws.labelled_slices(sid) == [0] and not ws.labels(sid)[1].any()
    assert [h["status"] for h in ws.provenance(sid, 1)] == ["annotated", "unlabelled"]
    assert ws.provenance(sid, 1)[-1]["by"] == "carol"
    ws.undo_last(sid)
    np.testing.assert_array_equal(ws.labels(sid), lab)


def test_uint16_labels(ws: Workspace) -> None:
    ws.set_label_names({0: "bg", 300: "many"})
    sid = ws.add_scan(make_scan())
    ws.set_labels(sid, _lab({0: 1}))
    ws.set_labels(sid, _lab({1: 300}, np.uint16))
    got = ws.labels(sid)
    assert got.dtype == np.uint16 and got[1].max() == 300 and got[0].max() == 1


def test_float_whole_numbers_accepted(ws: Workspace) -> None:
    sid = ws.add_scan(make_scan())
    assert ws.set_labels(sid, _lab({1: 1}).astype(np.float32)) == [1]
    assert ws.set_labels(sid, _lab({2: 1}).astype(bool)) == [2]


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.zeros((3, 6, 5), np.uint8), "does not match the image shape"),
        (np.full(SHAPE, 0.5, np.float32), "fractional values 0.5"),
        (np.full(SHAPE, -1, np.int16), "negative"),
        (np.full(SHAPE, 7, np.uint8), "class 7 is not a known label"),
    ],
)
def test_bad_labels_rejected_nothing_written(ws: Workspace, labels: np.ndarray, match: str) -> None:
    sid = ws.add_scan(make_scan())
    ws.set_labels(sid, _lab({0: 1}))
    before = _files(ws)
    with pytest.raises(LabelError, match=rf"scan '{sid}'.*{match}"):
        ws.set_labels(sid, labels)
    assert _files(ws) == before


def test_bad_arguments(ws: Workspace) -> None:
    sid = ws.add_scan(make_scan())
    with pytest.raises(WorkspaceError, match="out of range"):
        ws.set_labels(sid, _lab({0: 1}), slices=[4])
    with pytest.raises(WorkspaceError, match="not an integer"):
        ws.set_labels(sid, _lab({0: 1}), slices=[0.5])  # type: ignore[list-item]
    with pytest.raises(WorkspaceError, match="status must be"):
        ws.set_labels(sid, _lab({0: 1}), status="unlabelled")
    with pytest.raises(WorkspaceError, match="no scan 'nope'"):
        ws.set_labels("nope", _lab({0: 1}))
    with pytest.raises(WorkspaceError, match="out of range"):
        ws.provenance(sid, 9)
    assert not (ws.root / "labels").exists()


def test_corrupt_label_file_named(ws: Workspace) -> None:
    sid = ws.add_scan(make_scan())
    ws.set_labels(sid, _lab({0: 1}))
    path = ws.root / "labels" / f"{sid}.npz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(WorkspaceError, match=rf"{sid}\.npz.*cannot read the label file"):
        ws.labels(sid)
    np.savez(path, mask=np.zeros((2, 2, 2), np.uint8), status=np.zeros(2, np.uint8), rev=1)
    with pytest.raises(WorkspaceError, match="shape"):
        Workspace.open(ws.root).labels(sid)


def test_returned_labels_are_copies(ws: Workspace) -> None:
    sid = ws.add_scan(make_scan())
    ws.set_labels(sid, _lab({0: 1}))
    got = ws.labels(sid)
    got[:] = 2
    assert ws.labels(sid).max() == 1


def test_correction_effort_is_kept_per_slice(tmp_path):
    from napari_mtssl import api

    ws = api.create_workspace(tmp_path / "ws", source="sample", labelled=0)
    sid = ws.scan_ids("train")[0]
    lab = np.zeros(ws.record(sid).shape, np.uint8)
    lab[2, 5:9, 5:9] = 1
    api.accept_correction(ws, sid, lab, [2, 3], effort_s={2: 41.26})
    assert ws.provenance(sid, 2)[-1]["effort_s"] == 41.3
    assert "effort_s" not in ws.provenance(sid, 3)[-1]
    assert ws.provenance(sid, 3)[-1]["status"] == "corrected"


def test_corrections_of_a_round_count_slices_people_and_effort(ws: Workspace) -> None:
    sid = ws.add_scan(make_scan())
    other = ws.add_scan(make_scan(name="patient002", seed=1))
    ws.set_labels(sid, _lab({0: 1}), by="alice")  # annotated, not a correction
    details = {1: {"effort_s": 30.0}, 2: {"effort_s": 12.5}}
    ws.set_labels(sid, _lab({1: 1, 2: 1}), slices=[1, 2], status="corrected", details=details)
    ws.set_labels(other, _lab({3: 2}), slices=[3], status="corrected", by="simulated annotator")
    got = ws.corrections_in_round(0)
    assert got == {
        "slices": 3,
        "by": {"user": 2, "simulated annotator": 1},
        "timed_slices": 2,
        "effort_s": 42.5,
    }
    ws.undo_last(other)  # an undone correction no longer counts
    assert ws.corrections_in_round(0)["slices"] == 2
    ws.add_round({"trained": "retrain-quick"})
    ws.set_labels(sid, _lab({3: 1}), slices=[3], status="corrected")
    assert ws.corrections_in_round(1)["slices"] == 1
    assert ws.corrections_in_round(0)["slices"] == 2  # round 0's stay where they were
