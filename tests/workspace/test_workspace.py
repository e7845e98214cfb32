from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_mtssl.workspace import SPLITS, Workspace, WorkspaceError

from .conftest import make_scan


def test_create_open_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "study"
    ws = Workspace.create(root, label_names={0: "background", 1: "LV", 3: "RV"})
    assert ws.label_names == {0: "background", 1: "LV", 3: "RV"}
    assert ws.num_classes == 4
    a = ws.add_scan(make_scan(name="a", seed=1), split="train")
    b = ws.add_scan(make_scan(name="b", seed=2), split="val")
    lab = np.zeros((4, 6, 5), np.uint8)
    lab[1, 2:4, 1:3] = 3
    ws.set_labels(a, lab, status="annotated", by="alice")
    ws.set_labels(b, lab, slices=[0, 1], status="corrected", model="student")
    ws.add_round({"trained": "all", "dice": {"student": 0.8}})
    run = ws.new_run("stage1", {"lr": 0.01})
    run.write_metrics({"dice": 0.5})

    again = Workspace.open(root)
    assert again.label_names == ws.label_names
    assert again.scan_ids() == [a, b]
    for sid in (a, b):
        assert again.record(sid) == ws.record(sid)
        np.testing.assert_array_equal(again.labels(sid), ws.labels(sid))
        assert again.slice_status(sid) == ws.slice_status(sid)
        for z in range(4):
            assert again.provenance(sid, z) == ws.provenance(sid, z)
        got = again.load_scan(sid)
        np.testing.assert_array_equal(got.array, ws.load_scan(sid).array)
    assert again.summary() == ws.summary()
    assert again.rounds() == ws.rounds()
    assert again.current_round == 1
    assert [r.id for r in again.runs()] == [run.id]
    assert again.run(run.id).config == {"lr": 0.01}
    assert again.run(run.id).metrics() == {"dice": 0.5}


def test_default_label_names_and_num_classes(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path / "w")
    assert ws.label_names == {0: "background", 1: "foreground"}
    assert ws.num_classes == 2
    ws.set_label_names({0: "bg"})
    assert ws.num_classes == 2  # at least background + one class
    assert Workspace.open(tmp_path / "w").label_names == {0: "bg"}


def test_create_refuses_existing_and_nonempty(tmp_path: Path) -> None:
    Workspace.create(tmp_path / "w")
    with pytest.raises(WorkspaceError, match="already exists"):
        Workspace.create(tmp_path / "w")
    assert Workspace.create(tmp_path / "w", exist_ok=True).root == (tmp_path / "w").resolve()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hi")
    with pytest.raises(WorkspaceError, match="not empty"):
        Workspace.create(other)
    assert not (other / "workspace.json").exists()


def test_open_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="workspace.json.*not a napari-mtssl workspace"):
        Workspace.open(tmp_path)
    ws = Workspace.create(tmp_path / "w")
    file = ws.root / "workspace.json"
    good = file.read_text()

    file.write_text(good[: len(good) // 2])
    with pytest.raises(WorkspaceError, match=r"workspace\.json.*corrupt"):
        Workspace.open(ws.root)

    data = json.loads(good)
    data["version"] = 99
    file.write_text(json.dumps(data))
    with pytest.raises(WorkspaceError, match="newer napari-mtssl"):
        Workspace.open(ws.root)

    file.write_text(json.dumps({"hello": 1}))
    with pytest.raises(WorkspaceError, match="not a napari-mtssl workspace file"):
        Workspace.open(ws.root)

    data = json.loads(good)
    data["scans"] = [{"id": "x"}]
    file.write_text(json.dumps(data))
    with pytest.raises(WorkspaceError, match="bad scan entry"):
        Workspace.open(ws.root)


def test_bad_label_names(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="not an integer"):
        Workspace.create(tmp_path / "w", label_names={"a": "x"})  # type: ignore[dict-item]
    assert not (tmp_path / "w").exists()
    ws = Workspace.create(tmp_path / "w2")
    with pytest.raises(WorkspaceError):
        ws.set_label_names({0: "bg", -1: "neg"})
    assert ws.label_names == {0: "background", 1: "foreground"}


def test_set_label_names_refuses_dropping_used_class(ws: Workspace) -> None:
    sid = ws.add_scan(make_scan())
    lab = np.zeros((4, 6, 5), np.uint8)
    lab[0, 0, 0] = 2
    ws.set_labels(sid, lab)
    with pytest.raises(WorkspaceError, match="class 2"):
        ws.set_label_names({0: "background", 1: "LV"})
    assert ws.num_classes == 3


def test_splits(ws: Workspace) -> None:
    ids = [ws.add_scan(make_scan(name=f"p{i}", seed=i)) for i in range(4)]
    assert ws.scan_ids("train") == ids
    ws.set_split(ids[1], "val")
    ws.set_split(ids[2], "test")
    ws.set_split(ids[3], "unused")
    for split, want in zip(SPLITS, [[ids[0]], [ids[1]], [ids[2]], [ids[3]]]):
        assert ws.scan_ids(split) == want
    assert Workspace.open(ws.root).scan_ids("val") == [ids[1]]
    with pytest.raises(WorkspaceError, match="split must be one of"):
        ws.set_split(ids[0], "training")
    with pytest.raises(WorkspaceError, match="no scan"):
        ws.set_split("nope", "val")
    with pytest.raises(WorkspaceError, match="split must be one of"):
        ws.add_scan(make_scan(name="q"), split="bogus")
    assert len(ws.scan_ids()) == 4


def test_rounds(ws: Workspace) -> None:
    assert ws.current_round == 0 and ws.rounds() == []
    assert ws.add_round({"what": "all", "dice": {"student": 0.71}}) == 1
    assert ws.add_round({"what": "retrain-quick", "corrected": 3}) == 2
    assert ws.current_round == 2
    r = Workspace.open(ws.root).rounds()
    assert [e["round"] for e in r] == [1, 2]
    assert r[0]["dice"] == {"student": 0.71} and "time" in r[0]
    with pytest.raises(TypeError):
        ws.add_round({"bad": object()})
    assert ws.current_round == 2


def test_other_process_changes_are_seen(ws: Workspace) -> None:
    other = Workspace.open(ws.root)
    sid = other.add_scan(make_scan())
    other.add_round({"x": 1})
    assert ws.scan_ids() == [sid]
    assert ws.current_round == 1
    # a write from the first handle keeps the second's additions (read-modify-write)
    ws.set_split(sid, "val")
    assert other.record(sid).split == "val"
    assert other.current_round == 1


def test_summary(ws: Workspace) -> None:
    sid = ws.add_scan(make_scan(), split="val")
    lab = np.zeros((4, 6, 5), np.uint8)
    lab[0, 1, 1] = 1
    lab[2, 1, 1] = 1
    ws.set_labels(sid, lab)
    ws.set_labels(sid, lab, slices=[3], status="corrected")
    assert ws.summary() == [
        {
            "id": sid,
            "name": "patient001",
            "split": "val",
            "n_slices": 4,
            "n_annotated": 2,
            "n_corrected": 1,
        }
    ]
