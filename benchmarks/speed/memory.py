"""Benchmark 5: peak memory (resident set) of training and of opening a large volume.

Every measurement runs in a fresh child process, which reports its peak RSS (``VmHWM``) after
its imports and after the work, so the figure is the work's own peak, not this process's.

* ``read``: a synthetic 512 x 512 x 300 int16 volume written to /tmp as one NIfTI file and as a
  DICOM series of 300 files, opened with ``napari_mtssl.io.read_scans``. The float32 array the
  reader returns is 300 MiB; the ratio of peak RSS growth to that says how many copies exist
  at once.
* ``ct``: the same 512 x 512 x 300 volume as a CT scan (0.7 mm in-plane, 1 mm slices) with a
  labelled structure on 30 of its slices, in a fresh workspace: the plan (fingerprint, shape,
  timing), preparing the data (normalised, cached on disk, memory-mapped), ten training steps
  of the planned network, and the whole-volume prediction mapped back onto its grid. The
  target is that all of it fits in 4 GiB (issue: models that learn the anatomy).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SHAPE = (300, 512, 512)  # (z, y, x)


def _rss_mb() -> float:
    """Peak RSS of this process image in MiB: ``VmHWM`` (reset at exec, unlike ``ru_maxrss``,
    which a child started by fork + exec inherits from its parent's size at the fork)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB


def write_nifti(path: Path) -> Path:
    import nibabel as nib

    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 2000, size=SHAPE[::-1], dtype=np.int16)  # NIfTI: (x, y, z)
    img = nib.Nifti1Image(data, np.diag([0.7, 0.7, 1.0, 1.0]))
    nib.save(img, str(path))
    return path


def write_dicom(folder: Path) -> Path:
    """A CT series: 300 slices of 512 x 512 int16, explicit VR little endian, uncompressed."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    if folder.is_dir() and len(list(folder.glob("*.dcm"))) == SHAPE[0]:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for z in range(SHAPE[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID = "Bench^Volume", "bench"
        ds.SeriesNumber, ds.InstanceNumber = 1, z + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 1.0
        ds.Rows, ds.Columns = SHAPE[1], SHAPE[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024.0, 1.0
        ds.PixelData = rng.integers(0, 3000, size=SHAPE[1:], dtype=np.int16).tobytes()
        ds.save_as(folder / f"slice{z:03d}.dcm", enforce_file_format=True)
    return folder


def child_read(path: str) -> dict[str, Any]:
    import napari_mtssl.io as mio

    before = _rss_mb()
    t0 = time.perf_counter()
    scans = mio.read_scans(path)
    sec = time.perf_counter() - t0
    arr = scans[0].array
    return {
        "rss_after_imports_mb": round(before, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "growth_mb": round(_rss_mb() - before, 1),
        "array_mb": round(arr.nbytes / 2**20, 1),
        "dtype": str(arr.dtype),
        "shape": list(arr.shape),
        "seconds": round(sec, 2),
    }


def child_ct(folder: str) -> dict[str, Any]:
    """Plan, prepare, train ten steps and predict the whole CT volume; peak RSS at each stage."""
    import shutil

    import torch

    from napari_mtssl import api
    from napari_mtssl.io.scan import Scan, grid_affine
    from napari_mtssl.training.data.slices import StudyData
    from napari_mtssl.training.loop import stages
    from napari_mtssl.training.loop.terms import build_term
    from napari_mtssl.training.loop.trainer import UnitSpec, train_unit
    from napari_mtssl.training.planning.fingerprint import fingerprint
    from napari_mtssl.training.planning.planner import make_plan
    from napari_mtssl.training.prediction.inference import predict_scan

    before = _rss_mb()
    stages_mb: dict[str, float] = {}
    t0 = time.perf_counter()
    root = Path(folder)
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    arr = rng.normal(40, 60, size=SHAPE).astype(np.float32)  # soft tissue, HU
    zz, yy, xx = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    organ = ((yy - 256) ** 2 + (xx - 300) ** 2 < 60**2) & (zz >= 100) & (zz < 200)
    arr[organ] += 80
    labels = organ.astype(np.uint8)
    spacing = (1.0, 0.7, 0.7)
    scan = Scan(arr, spacing=spacing, affine=grid_affine(spacing), name="ct", modality="CT")
    ws = api.create_workspace(root / "ws")
    ws.set_label_names({0: "background", 1: "organ"})
    sid = ws.add_scan(scan, split="train")
    ws.set_labels(sid, labels, slices=range(140, 170), by="benchmark")
    del arr, labels, organ, scan
    stages_mb["workspace"] = _rss_mb()
    cfg = api.make_config("quick", budget="1h", tasks=["inpaint"], device="cpu")
    fp = fingerprint(ws)
    plan = make_plan(fp, cfg, "baseline", allocate_steps=False)
    stages_mb["plan"] = _rss_mb()
    shaped = plan.apply(cfg)
    study = StudyData.from_workspace(ws, plan.preprocessing(), plan.patch)
    stages_mb["prepare"] = _rss_mb()
    shaped.baseline.steps = shaped.stage1.joint_steps = 10
    net = stages.new_net(shaped, 2)
    spec = UnitSpec("bench", "baseline", 10, [build_term("seg")], model="bench", evaluate=False)
    api.run(train_unit(spec, net, study, shaped, torch.device("cpu")))
    stages_mb["train_10_steps"] = _rss_mb()
    vol = ws.load_scan(sid)
    labels_out, probs = predict_scan(
        net,
        vol.array,
        vol.spacing,
        plan.preprocessing(),
        plan.patch,
        torch.device("cpu"),
        modality="CT",
        precision=plan.precision,
    )
    stages_mb["predict_whole_volume"] = _rss_mb()
    out = {
        "rss_after_imports_mb": round(before, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "peak_by_stage_mb": {k: round(v, 1) for k, v in stages_mb.items()},
        "plan": {
            "spacing": plan.spacing,
            "patch": plan.patch,
            "width": plan.width,
            "depth": plan.depth,
            "norm": plan.norms.get("CT"),
            "reasons": plan.reasons,
        },
        "prediction_shape": list(labels_out.shape),
        "probs_mb": round(probs.nbytes / 2**20, 1),
        "cache_files_mb": round(
            sum(f.stat().st_size for f in (root / "ws" / "cache").rglob("*.npy")) / 2**20, 1
        ),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    shutil.rmtree(root, ignore_errors=True)
    return out


def _in_child(kind: str, arg: str) -> dict[str, Any]:
    run = Path(__file__).with_name("run.py")
    out = subprocess.run(
        [sys.executable, str(run), f"_child_{kind}", arg],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"child {kind} {arg} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench() -> dict[str, Any]:
    from .common import WORK

    WORK.mkdir(parents=True, exist_ok=True)
    nii = write_nifti(WORK / "vol512x512x300.nii.gz")
    dcm = write_dicom(WORK / "dicom512x512x300")
    out = {
        "volume_shape_zyx": list(SHAPE),
        "read_nifti": _in_child("read", str(nii)),
        "read_dicom": _in_child("read", str(dcm)),
        "ct_plan_train_predict": _in_child("ct", str(WORK / "ct_memory")),
    }
    print(out, flush=True)
    return out
