"""Decathlon / nnU-Net dataset folders: synthetic ones and the real ACDC split."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_mtssl.io import ScanReadError, open_dataset, read_scans
from tests.conftest import ACDC


def _make(root: Path, names, *, nnunet: bool, labels_json, splits=None, with_labels=None):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([-1.5, 1.5, 4.0, 1.0])
    for i, name in enumerate(names):
        img = np.full((6, 5, 3), i, np.float32)
        suffix = "_0000" if nnunet else ""
        nib.save(nib.Nifti1Image(img, affine), root / "imagesTr" / f"{name}{suffix}.nii.gz")
        if nnunet:  # a second channel must not become a case
            nib.save(nib.Nifti1Image(img, affine), root / "imagesTr" / f"{name}_0001.nii.gz")
        if with_labels is None or name in with_labels:
            lab = np.zeros((6, 5, 3), np.uint8)
            lab[1, 2, 0] = 1
            nib.save(nib.Nifti1Image(lab, affine), root / "labelsTr" / f"{name}.nii.gz")
    (root / "imagesTr" / "._junk.nii.gz").write_bytes(b"macOS resource fork")
    info = {"name": "toy", "labels": labels_json}
    if splits is not None:
        info["splits"] = splits
    (root / "dataset.json").write_text(json.dumps(info))


def test_msd_layout(tmp_path):
    _make(
        tmp_path,
        ["la_003", "la_010", "la_004"],
        nnunet=False,
        labels_json={"0": "background", "1": "left atrium"},
        with_labels={"la_003", "la_004"},
    )
    ds = open_dataset(tmp_path)
    assert ds.label_names == {0: "background", 1: "left atrium"}
    assert [c.name for c in ds.cases] == ["la_003", "la_004", "la_010"]
    assert [c.label is not None for c in ds.cases] == [True, True, False]
    assert ds.splits == {}
    scan, labels = ds.load("la_004")
    assert scan.name == "la_004" and labels.shape == scan.shape and labels.sum() == 1
    assert np.all(scan.array == 2)
    _, none = ds.load(ds.case("la_010"))
    assert none is None
    with pytest.raises(KeyError, match="nope"):
        ds.case("nope")


def test_nnunet_v2_layout(tmp_path):
    _make(
        tmp_path,
        ["c1", "c2"],
        nnunet=True,
        labels_json={"background": 0, "tumour": 1, "cyst": 2},
        splits=[{"train": ["c1"], "val": ["c2"]}],
    )
    ds = open_dataset(tmp_path)
    assert ds.label_names == {0: "background", 1: "tumour", 2: "cyst"}
    assert [c.name for c in ds.cases] == ["c1", "c2"]
    assert ds.cases[0].image.name == "c1_0000.nii.gz"
    assert ds.splits == {"train": ["c1"], "val": ["c2"]}
    assert any("fold 0" in n for n in ds.notes)
    scan, labels = ds.load("c2")
    np.testing.assert_array_equal(np.argwhere(labels), np.argwhere(labels))  # loads
    assert labels.shape == scan.shape


def test_not_a_dataset(tmp_path):
    with pytest.raises(ScanReadError, match="not a dataset folder"):
        open_dataset(tmp_path)
    with pytest.raises(ScanReadError, match="no such folder"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(ScanReadError, match="dataset.json: not valid JSON"):
        open_dataset(tmp_path)


def test_read_scans_points_to_open_dataset(tmp_path):
    _make(tmp_path, ["a"], nnunet=False, labels_json={"0": "background"})
    with pytest.raises(ScanReadError, match="open_dataset"):
        read_scans(tmp_path)


@pytest.mark.skipif(not ACDC.is_dir(), reason=f"ACDC data not found at {ACDC}")
def test_acdc():
    ds = open_dataset(ACDC)
    assert len(ds.cases) == 160 and all(c.label is not None for c in ds.cases)
    assert ds.label_names == {
        0: "background",
        1: "right ventricle",
        2: "myocardium",
        3: "left ventricle",
    }
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 140, "val": 20}
    assert set(ds.splits["train"]) | set(ds.splits["val"]) == {c.name for c in ds.cases}
    assert ds.notes == []
    scan, labels = ds.load(ds.splits["val"][0])
    assert labels.shape == scan.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert 6 <= scan.shape[0] <= 18  # slices first
    # Orientation consistent: image and mask read through the same canonical transform.
    raw_img = np.asarray(nib.load(ds.case(scan.name).image).dataobj)
    raw_lab = np.asarray(nib.load(ds.case(scan.name).label).dataobj)
    k = scan.shape[0] // 2
    np.testing.assert_array_equal(scan.array[k], raw_img[::-1, ::-1, k].T)
    np.testing.assert_array_equal(labels[k], raw_lab[::-1, ::-1, k].T)
