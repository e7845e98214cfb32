"""What every ``napari-mtssl`` command shares: one-line errors (never a traceback), a crash log for
the unexpected, documented exit statuses, consistent flags, ``init``, ``resume --device/--threads``,
``predict`` over a folder, and docs/cli.md generated from the parser. Most tests need no trained
model: they replace prediction or training by a stand-in."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_mtssl import active, api, cli
from napari_mtssl.cli import EXIT_STATUS, build_parser, main, reference_markdown
from tests.conftest import ROOT
from tests.test_api import make_dataset


@pytest.fixture(autouse=True)
def _logs_here(tmp_path, monkeypatch):
    """Crash logs of these tests go to a temporary folder, not the user's log folder."""
    logs = tmp_path / "user-logs"
    monkeypatch.setattr(cli, "_user_log_dir", lambda: logs)
    return logs


def _init(folder: Path, *extra: str) -> Path:
    assert main(["init", str(folder), *extra]) == 0
    return folder


def _fails_in_one_line(capsys, argv, *, expect: str, status: int = 2) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == status, (argv, err)
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert expect in err, err
    return err


# -- errors: one line, a status, a log for the unexpected ------------------------------------


def test_every_command_fails_in_one_line(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    ws = _init(tmp_path / "ws")
    missing = str(tmp_path / "missing")
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    capsys.readouterr()
    cases = [
        (["init", str(a_file)], "is a file"),
        (["init", str(tmp_path / "full")], "not empty"),
        (["init", str(ws)], "already exists"),
        (["train", missing, "--out", str(tmp_path / "w")], "no such dataset"),
        (["resume", missing], "napari-mtssl init"),
        (["resume", str(ws)], "no stopped or interrupted run"),
        (["predict", missing, "x", "--out", str(tmp_path / "m.nii.gz")], "napari-mtssl init"),
        (["predict", str(ws), missing, "--out", str(tmp_path / "m.nii.gz")], "no such file"),
        (["predict", str(ws), str(data), "--out", str(tmp_path / "masks")], "dataset folder"),
        (["codes", missing], "napari-mtssl init"),
        (["codes", str(ws), missing], "no such codes file"),
        (["codes", str(ws), str(a_file)], "not valid JSON"),
        (["export", missing, "--out", str(tmp_path / "m.onnx")], "napari-mtssl init"),
        (["import", missing, str(a_file)], "napari-mtssl init"),
        (["import", str(ws), missing], "no such file"),
        (["evaluate", missing, str(data)], "napari-mtssl init"),
        (["evaluate", str(ws), str(data)], "no trained models"),
        (["simulate", str(ws), "--out", str(tmp_path / "o")], "not a dataset folder"),
        (["demo", "--out", str(tmp_path / "demo"), "--budget", "soon"], "10m"),
    ]
    for argv, expect in cases:
        _fails_in_one_line(capsys, argv, expect=expect)
    assert not (tmp_path / "demo").exists()  # settings are checked before a workspace is made


@pytest.mark.parametrize(
    "argv",
    [
        ["init"],
        ["train", "x", "--profile", "enormous"],
        ["resume", "w", "--threads", "-1"],
        ["resume", "w", "--device", "tpu"],
        ["predict", "w", "x", "--out", "m.nii.gz", "--model", "studnet"],
        ["codes"],
        ["export", "w", "--out", "m.onnx", "--model", "teacher:"],
        ["import", "w", "f.onnx", "--as", "teacher"],
        ["evaluate", "w", "d", "--model", "baseline,nope"],
        ["simulate", "d"],
        ["demo", "--no-such-flag"],
    ],
)
def test_bad_arguments_exit_2_without_traceback(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


def test_a_model_typo_says_what_models_are(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "w", "x", "--out", "m.nii.gz", "--model", "studnet"])
    assert "teacher:<task>" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_and_a_log(tmp_path, capsys, monkeypatch, _logs_here):
    from napari_mtssl.workspace import Workspace

    def boom(*a, **k):
        raise RuntimeError("disk controller on fire\nsecond line")

    monkeypatch.setattr(Workspace, "create", boom)
    err = _fails_in_one_line(
        capsys, ["init", str(tmp_path / "w")], expect="unexpected error", status=1
    )
    assert "RuntimeError: disk controller on fire" in err and "second line" not in err
    logs = list(_logs_here.glob("napari-mtssl-init-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    text = logs[0].read_text()
    assert "Traceback" in text and "second line" in text and "command: napari-mtssl init" in text
    with pytest.raises(RuntimeError):  # --debug: the traceback itself
        main(["--debug", "init", str(tmp_path / "w")])


def test_the_log_goes_into_the_workspace_when_there_is_one(tmp_path, capsys, monkeypatch):
    ws = _init(tmp_path / "ws")
    data = make_dataset(tmp_path / "data")

    def bug(_ws):
        raise KeyError("missing_key")  # a bare key: a bug, not something the user gave

    monkeypatch.setattr(api, "list_models", bug)
    capsys.readouterr()
    err = _fails_in_one_line(capsys, ["evaluate", str(ws), str(data)], expect="KeyError", status=1)
    logs = list((ws / "logs").glob("napari-mtssl-evaluate-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err


def test_exit_statuses_are_in_help_and_docs(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    docs = (ROOT / "docs" / "cli.md").read_text()
    for code, _ in EXIT_STATUS:
        assert f"\n  {code} " in out
        assert f"| {code} |" in docs
    assert [c for c, _ in EXIT_STATUS] == [0, 1, 2, 130]


# -- flags -----------------------------------------------------------------------------------


def test_model_flags_are_one_spelling_with_the_old_one_kept():
    p = build_parser()
    new = p.parse_args(["evaluate", "w", "d", "--model", "baseline, student"])
    old = p.parse_args(["evaluate", "w", "d", "--models", "baseline,teacher:sdm"])
    assert new.model == ["baseline", "student"] and old.model == ["baseline", "teacher:sdm"]
    assert p.parse_args(["evaluate", "w", "d"]).model is None
    assert p.parse_args(["predict", "w", "x", "--out", "m.nii.gz"]).model == "student"
    assert p.parse_args(["export", "w", "--out", "m.onnx", "--model", "sdm:joint"]).model == (
        "sdm:joint"
    )
    ev = _subparser(p, "evaluate").format_help()
    assert "--models" not in ev  # the old spelling works, --help shows one


def _subparser(p, name):
    return cli._subcommands(p)[name]


def test_help_lists_the_values_of_model_what_and_import_as(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside "fine-tune"
    p = build_parser()
    for name in ("predict", "export", "evaluate"):
        text = " ".join(_subparser(p, name).format_help().split())
        assert "student, baseline, all_joint, teacher:<task>" in text and "<task>:joint" in text
    train = " ".join(_subparser(p, "train").format_help().split())
    assert "retrain-quick (fine-tune the latest student" in train
    imp = _subparser(p, "import").format_help()
    assert "--as MODEL" in imp and "AS_" not in imp


def test_docs_cli_md_is_generated_from_the_parser():
    docs = ROOT / "docs" / "cli.md"
    assert docs.read_text() == reference_markdown(), (
        'docs/cli.md is stale; regenerate it: python -c "from napari_mtssl.cli import '
        "reference_markdown as r; open('docs/cli.md', 'w').write(r())\""
    )


def test_reference_lists_every_command_and_argument():
    md = reference_markdown()
    p = build_parser()
    for name, sub in cli._subcommands(p).items():
        assert f"### napari-mtssl {name}\n" in md
        for action in cli._shown(sub):
            assert f"`{action.option_strings[0] if action.option_strings else action.metavar}" in md
    assert "--models" not in md and "<task>" not in md  # hidden alias; no raw tags


# -- init ------------------------------------------------------------------------------------


def test_init_makes_an_empty_workspace_that_import_and_predict_open(tmp_path, capsys):
    from napari_mtssl.workspace import Workspace

    ws = _init(tmp_path / "new" / "ws", "--classes", "right ventricle, myocardium,left ventricle")
    assert "created the workspace" in capsys.readouterr().out
    w = Workspace.open(ws)
    assert w.label_names == {
        0: "background",
        1: "right ventricle",
        2: "myocardium",
        3: "left ventricle",
    }
    assert w.scan_ids() == [] and w.runs() == []
    assert Workspace.open(_init(tmp_path / "plain")).label_names == {
        0: "background",
        1: "foreground",
    }
    _fails_in_one_line(capsys, ["init", str(tmp_path / "x"), "--classes", "a,,b"], expect="empty")
    _fails_in_one_line(capsys, ["init", str(tmp_path / "y"), "--classes", "a,a"], expect="twice")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# -- resume --device / --threads; stops are status 130 ---------------------------------------


def _stopped_run(ws_folder: Path, **config):
    from napari_mtssl.workspace import Workspace

    w = Workspace.open(ws_folder)
    cfg = api.make_config("tiny", **config)
    run = w.new_run("all", cfg.to_dict())
    (run.path / "plan.json").write_text("{}")  # it planned before it stopped
    run.set_status("stopped")
    return w, run


def _fake_train(seen: dict, result: dict):
    def train(ws, cfg, what="all", *, resume=None, **kw):
        seen.update(cfg=cfg, what=what, resume=resume)

        def gen():
            return dict(result)
            yield  # a generator

        return gen()

    return train


def test_resume_parses_device_and_threads():
    p = build_parser()
    a = p.parse_args(["resume", "w", "r1", "--device", "cpu", "--threads", "2"])
    assert (a.workspace, a.run, a.device, a.threads) == ("w", "r1", "cpu", 2)
    b = p.parse_args(["resume", "w"])
    assert b.device is None and b.threads is None  # the run's own


def test_resume_passes_device_and_threads_to_the_run(tmp_path, capsys, monkeypatch):
    ws = _init(tmp_path / "ws")
    _, run = _stopped_run(ws, device="auto", num_threads=0)
    before = (run.path / "config.json").read_text()
    seen: dict = {}
    monkeypatch.setattr(api, "train", _fake_train(seen, {"stopped": True}))
    assert main(["resume", str(ws), "--quiet"]) == 130  # stopped again: status 130
    assert (run.path / "config.json").read_text() == before  # no flags: nothing rewritten
    assert seen["cfg"].device == "auto" and seen["resume"] == run.id
    rc = main(["resume", str(ws), run.id, "--device", "cpu", "--threads", "3", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 130 and "resume" in err and "Traceback" not in err
    assert "on cpu, 3 threads" in err
    assert (seen["cfg"].device, seen["cfg"].num_threads, seen["what"]) == ("cpu", 3, "all")
    saved = json.loads((run.path / "config.json").read_text())  # what the run's units read
    assert saved["device"] == "cpu" and saved["num_threads"] == 3


def test_resume_leaves_a_finished_run_alone(tmp_path, capsys):
    ws = _init(tmp_path / "ws")
    _, run = _stopped_run(ws)
    run.set_status("done")
    before = (run.path / "config.json").read_text()
    _fails_in_one_line(
        capsys, ["resume", str(ws), run.id, "--device", "cpu"], expect="nothing to resume"
    )
    assert (run.path / "config.json").read_text() == before


def test_train_and_simulate_stopped_exit_130(tmp_path, capsys, monkeypatch):
    ws = _init(tmp_path / "ws")
    monkeypatch.setattr(api, "train", _fake_train({}, {"stopped": True}))
    argv = ["train", str(ws), "--profile", "tiny", "--device", "cpu", "--quiet"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "stopped before the end" in err and f"napari-mtssl resume {ws}" in err

    import napari_mtssl.simulate as sim

    def stopped(settings, stop=None):
        return {"finished": False}
        yield

    monkeypatch.setattr(sim, "simulate", stopped)
    data = make_dataset(tmp_path / "data")
    argv = ["simulate", str(data), "--out", str(tmp_path / "sim"), "--quiet"]
    assert main(argv) == 130
    assert "run the same command again" in capsys.readouterr().out


def test_ctrl_c_is_130(tmp_path, capsys, monkeypatch):
    from napari_mtssl.workspace import Workspace

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Workspace, "create", interrupted)
    _fails_in_one_line(capsys, ["init", str(tmp_path / "w")], expect="interrupted", status=130)


# -- predict over a folder -------------------------------------------------------------------


def _scans_folder(root: Path, data: Path) -> Path:
    """A folder as a scanner export or a collaborator leaves it: NIfTI files (one in a
    sub-folder), a DICOM series folder, a TIFF stack, a broken NIfTI and a note."""
    import shutil

    import tifffile

    from tests.io.conftest import coded_raw, write_series

    images = data / "imagesTr"
    (root / "sub").mkdir(parents=True)
    shutil.copy(images / "patient001_frame01.nii.gz", root / "a.nii.gz")
    shutil.copy(images / "patient002_frame01.nii.gz", root / "sub" / "b.nii.gz")
    write_series(
        root / "series",
        coded_raw((3, 32, 28)),
        row_dir=np.array([1.0, 0, 0]),
        col_dir=np.array([0, 1.0, 0]),
        origin=np.zeros(3),
        slice_step=2.0,
    )
    rng = np.random.default_rng(0)
    stack = rng.random((3, 20, 24)).astype(np.float32)
    tifffile.imwrite(root / "stack.tif", stack, photometric="minisblack")
    (root / "broken.nii.gz").write_bytes(b"not a nifti")
    (root / "notes.txt").write_text("scanned on Tuesday")
    return root


def _fake_prediction(monkeypatch, models=("student",)):
    calls = []

    def predict(ws, scan, model="student", device="auto"):
        calls.append(scan.name)
        labels = np.zeros(scan.shape, np.uint8)
        labels[:, :4, :4] = 1
        return api.Prediction(labels=labels, probs=None, model=model, run="r")

    monkeypatch.setattr(api, "predict", predict)
    monkeypatch.setattr(api, "list_models", lambda ws: list(models))
    return calls


def test_predict_a_folder_writes_one_mask_per_scan(tmp_path, capsys, monkeypatch):
    import tifffile

    data = make_dataset(tmp_path / "data")
    ws = _init(tmp_path / "ws")
    scans = _scans_folder(tmp_path / "scans", data)
    before = {p: p.read_bytes() for p in scans.rglob("*") if p.is_file()}
    calls = _fake_prediction(monkeypatch)
    out = tmp_path / "masks"
    capsys.readouterr()
    argv = ["predict", str(ws), str(scans), "--out", str(out), "--device", "cpu"]
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 2  # the broken file: named, skipped, counted
    assert "Traceback" not in cap.err
    broken = [line for line in cap.err.splitlines() if "broken.nii.gz" in line]
    assert len(broken) == 1 and "skipped" in broken[0]
    assert "notes.txt" in cap.err  # left out, and said so
    assert "wrote 4 mask(s)" in cap.out and "1 input(s) could not be segmented" in cap.out
    assert len(calls) == 4
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.nii.gz", "series.nii.gz", "stack.tif", "sub/b.nii.gz"]
    for name, src in (("a.nii.gz", "a.nii.gz"), ("sub/b.nii.gz", "sub/b.nii.gz")):
        mask, image = nib.load(str(out / name)), nib.load(str(scans / src))
        assert mask.shape == image.shape
        np.testing.assert_allclose(mask.affine, image.affine)  # aligned with its scan
    assert tifffile.imread(out / "stack.tif").shape == (3, 20, 24)  # one slice per page
    assert {p: p.read_bytes() for p in scans.rglob("*") if p.is_file()} == before

    # again: masks are never replaced without --force, each one said so
    (scans / "broken.nii.gz").unlink()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("exists; add --force") == 4
    assert main([*argv, "--force", "--quiet"]) == 0
    assert "wrote 4 mask(s)" in capsys.readouterr().out


def test_predict_a_folder_refuses_what_it_must_not_touch(tmp_path, capsys, monkeypatch):
    data = make_dataset(tmp_path / "data")
    ws = _init(tmp_path / "ws")
    scans = _scans_folder(tmp_path / "scans", data)
    _fake_prediction(monkeypatch, models=("baseline",))
    capsys.readouterr()
    base = ["predict", str(ws), str(scans), "--device", "cpu", "--out"]
    _fails_in_one_line(capsys, [*base, str(scans / "masks")], expect="inside the input folder")
    _fails_in_one_line(capsys, [*base, str(ws / "masks")], expect="inside the workspace")
    _fails_in_one_line(capsys, [*base, str(tmp_path / "masks")], expect="no trained model")
    (tmp_path / "empty").mkdir()
    _fails_in_one_line(
        capsys,
        [*base[:2], str(tmp_path / "empty"), "--model", "baseline", "--out", str(tmp_path / "m2")],
        expect="no scans found",
    )
    assert not (scans / "masks").exists() and not (ws / "masks").exists()


def test_predict_one_file_into_a_folder(tmp_path, capsys, monkeypatch):
    data = make_dataset(tmp_path / "data")
    ws = _init(tmp_path / "ws")
    _fake_prediction(monkeypatch)
    image = data / "imagesTr" / "patient004_frame01.nii.gz"
    out = tmp_path / "masks"
    out.mkdir()
    assert main(["predict", str(ws), str(image), "--out", str(out), "--quiet"]) == 0
    assert (out / "patient004_frame01.nii.gz").is_file()


def test_predict_a_folder_with_a_trained_model(tmp_path_factory, capsys):
    """The real thing once: a tiny baseline, a folder of two scans, masks on their grids."""
    import shutil

    root = tmp_path_factory.mktemp("trained")
    data = make_dataset(root / "data")
    ws = api.create_workspace(root / "ws", source=data, labelled=2)
    cfg = api.make_config("tiny", device="cpu", executor="inline")
    api.run(api.train(ws, cfg, "baseline"))
    scans = root / "scans"
    scans.mkdir()
    for name in ("patient003_frame01", "patient004_frame01"):
        shutil.copy(data / "imagesTr" / f"{name}.nii.gz", scans / f"{name}.nii.gz")
    out = root / "masks"
    argv = ["predict", str(ws.root), str(scans), "--out", str(out), "--model", "baseline"]
    assert main([*argv, "--device", "cpu"]) == 0, capsys.readouterr().err
    for name in ("patient003_frame01", "patient004_frame01"):
        mask, image = nib.load(str(out / f"{name}.nii.gz")), nib.load(str(scans / f"{name}.nii.gz"))
        assert mask.shape == image.shape
        np.testing.assert_allclose(mask.affine, image.affine)
        assert np.asarray(mask.dataobj).max() <= 2
    # before any student, the slices to correct next come from the baseline's predictions
    got = api.propose_slices(ws, 3, "entropy", device="cpu", max_scans=2)
    free = active.candidates(ws)
    assert len(got) == 3 and all(c.z in free[c.scan] for c in got)


def test_workspace_errors_give_shell_advice():
    from argparse import Namespace

    from napari_mtssl.workspace import Workspace, WorkspaceError

    try:
        Workspace.open("/nonexistent/w")
    except WorkspaceError as exc:
        line = cli._known(Namespace(command="simulate"), exc)
    assert "napari-mtssl init" in line and "Workspace.create" not in line


# -- messages in the words of the command line -----------------------------------------------


def test_init_on_a_workspace_says_what_a_shell_user_does(tmp_path, capsys):
    ws = _init(tmp_path / "ws")
    capsys.readouterr()
    err = _fails_in_one_line(capsys, ["init", str(ws)], expect="a workspace already exists")
    assert "choose another folder" in err and "napari-mtssl commands" in err
    assert "(use open())" not in err


def test_resume_names_an_older_run_with_the_real_syntax(tmp_path, capsys):
    ws = _init(tmp_path / "ws")
    w, older = _stopped_run(ws)
    w.new_run("all", api.make_config("tiny").to_dict()).set_status("done")
    capsys.readouterr()
    err = _fails_in_one_line(capsys, ["resume", str(ws)], expect="no stopped or interrupted run")
    assert f"napari-mtssl resume {ws} RUN" in err and "--run" not in err
    assert older.path.parent.name == "runs" and older.path.name == older.id  # "under runs/"


def test_import_of_a_file_that_is_no_model_names_that_file(tmp_path, capsys):
    pytest.importorskip("onnx")
    ws = _init(tmp_path / "ws")
    junk = tmp_path / "passwd"
    junk.write_text("root:x:0:0:root:/root:/bin/bash\n")
    capsys.readouterr()
    err = _fails_in_one_line(capsys, ["import", str(ws), str(junk)], expect=f"{junk}: ")
    assert "model.onnx" not in err and "not a readable ONNX model" in err


def test_help_lists_the_task_names_and_parsing_is_unchanged(monkeypatch):
    from napari_mtssl.tasks import TASKS

    monkeypatch.setenv("COLUMNS", "1000")
    p = build_parser()
    for name in ("train", "simulate"):
        text = " ".join(_subparser(p, name).format_help().split())
        assert f"from: {', '.join(TASKS)} (default: sdm,inpaint" in text, text
    assert p.parse_args(["train", "d", "--tasks", "sdm,rubik"]).tasks == "sdm,rubik"
    assert p.parse_args(["train", "d"]).tasks is None  # the profile's tasks
    assert p.parse_args(["train", "d", "--tasks", "nope"]).tasks == "nope"  # checked by the run
    assert p.parse_args(["simulate", "d", "--out", "o"]).tasks == "sdm,inpaint"
