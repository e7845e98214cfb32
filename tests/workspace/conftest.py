from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_mtssl._atomic import atomic_write_with
from napari_mtssl.io.nifti import write_nifti_scan
from napari_mtssl.io.scan import Scan
from napari_mtssl.workspace import Workspace

SRC = str(Path(__file__).resolve().parents[2] / "src")


def dead_pid() -> int:
    """The pid of a process that has ended (a stale lock's owner)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_scan(shape=(4, 6, 5), spacing=(3.0, 0.8, 0.7), name="patient001", seed=0) -> Scan:
    """A small LPS-aligned scan with a non-trivial origin."""
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    # (z, y, x) index -> LPS: column z moves along S, y along P, x along L
    affine = np.array(
        [
            [0.0, 0.0, spacing[2], -10.0],
            [0.0, spacing[1], 0.0, 20.5],
            [spacing[0], 0.0, 0.0, -3.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    return Scan(
        array=rng.normal(size=shape).astype(np.float32),
        spacing=spacing,
        affine=affine,
        name=name,
        modality="MR",
    )


def write_nifti(scan: Scan, path: Path) -> Scan:
    """Save ``scan`` as NIfTI and return it with ``source`` pointing at the file."""
    atomic_write_with(path, lambda tmp: write_nifti_scan(scan, tmp))
    scan.source = str(path)
    return scan


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.create(tmp_path / "ws", label_names={0: "background", 1: "LV", 2: "myo"})
