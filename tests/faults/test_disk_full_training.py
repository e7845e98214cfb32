"""A disk that really fills while a run trains: `train` ends with one line naming the disk
(exit 2, no traceback), the models finished before are kept, and once space is freed
`resume` trains what is missing and the run ends done with every planned model saved.

The disk is a small tmpfs (root only; skipped with the reason elsewhere); a thread fills it
as soon as the run's first model is on it, as another program writing to the same disk would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.faults.test_crash import ROOT, _fill, _tiny_fs

CASE = "disk fills while training (a real tmpfs), resumed once space is freed, {}"


def _fill_after_first_model(root: Path, filler: Path, stop: threading.Event) -> threading.Thread:
    """Fill the disk of ``root`` once a model's sidecar (written after its weights) exists."""

    def watch() -> None:
        while not stop.is_set():
            if any(root.glob("runs/*/models/*.json")):
                _fill(filler)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _planned(run_path: Path) -> set[str]:
    """The models the run's plan will save: its units, and a teacher for each pretext task."""
    units = json.loads((run_path / "plan.json").read_text())["models"]
    tasks = {u.split(":")[0] for u in units if ":" in u}
    return set(units) | {f"teacher:{t}" for t in tasks}


@pytest.mark.slow  # trains the tiny profile's 8 models, twice in part: 15-40 s on 2 cores
@pytest.mark.parametrize("where", ["own process", "this process"])
def test_a_disk_that_fills_while_the_run_trains_ends_in_one_line_and_resumes(
    tmp_path, capsys, recorder, where
):
    """``this process``: train and resume in one Python process (a script, the viewer's job
    worker). Before: the run, which the full disk kept from being marked failed, still read
    "running" by its own living process, and resume found nothing to resume."""
    from napari_mtssl.cli import main
    from napari_mtssl.sample import make_sample_study
    from napari_mtssl.workspace import Workspace
    from napari_mtssl.workspace.importing import import_study

    # ~0.1 MB of scans; the run writes ~2 MB (8 models of ~130 kB, checkpoints, maps), and its
    # check before it starts asks for about that plus a quarter: 8 MB holds it with room to spare
    mnt = _tiny_fs(tmp_path, "8m")
    stop = threading.Event()
    try:
        study = make_sample_study(n_scans=3, n_labelled=2, shape=(4, 48, 48))
        ws = import_study(mnt / "ws", study)
        filler = mnt / "filler"
        watcher = _fill_after_first_model(ws.root, filler, stop)
        # the command in a process of its own, as a user runs it: it ends, and so does its
        # claim on the run (a run it could not mark failed on the full disk reads interrupted)
        argv = ["train", str(ws.root), "--profile", "tiny", "--what", "all", "--device", "cpu"]
        if where == "own process":
            proc = subprocess.run(
                [sys.executable, "-c", "import sys; from napari_mtssl.cli import main; "
                 f"sys.exit(main({[*argv, '--quiet']!r}))"],
                capture_output=True, text=True, timeout=300, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"},
            )  # fmt: skip
            rc, err = proc.returncode, proc.stderr.strip().splitlines()
        else:
            rc = main([*argv, "--quiet"])
            err = capsys.readouterr().err.strip().splitlines()
        stop.set()
        watcher.join(timeout=30)
        (run,) = Workspace.open(ws.root).runs()
        kept = set(run.finished_models())  # what resume will not train again
        saved = set(run.models())  # weights on the disk
        line = err[-1] if err else ""
        one_line = (
            filler.exists()
            and rc == 2
            and len(err) == 1
            and "Traceback" not in line
            and f"no space left on the disk of {ws.root}" in line
            and all(name in line for name in kept)
            and "resume" in line
            and "WORKSPACE" not in line
        )
        detail = f"train: exit {rc}, kept {sorted(kept)}: {' | '.join(err)}"
        if not one_line:
            recorder.record(CASE.format(where), "traceback", detail)
        assert one_line, detail

        filler.unlink()
        rc = main(["resume", str(ws.root), "--quiet"])
        out = capsys.readouterr()
        run = Workspace.open(ws.root).run(run.id)
        missing = _planned(run.path) - set(run.models())
        resumed = rc == 0 and run.status == "done" and not missing and saved <= set(run.models())
        resumed = resumed and "Traceback" not in out.err
        recorder.record(CASE.format(where), "read correctly" if resumed else "data lost",
                        f"{detail}; resume: exit {rc}, {run.status}, missing {sorted(missing)}")  # fmt: skip
        assert saved, "no model was saved before the disk filled"
        assert resumed, (rc, run.status, sorted(missing), out.err[-2000:])
    finally:
        stop.set()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
