"""npe2 reader and writers, exercised as plain functions (no viewer needed)."""

from __future__ import annotations

import json

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest

from napari_mtssl.io import ScanReadError, read_labels, read_scans
from napari_mtssl.io.napari_io import (
    get_reader,
    reader,
    write_labels_nifti,
    write_labels_tiff,
)


def test_reader_declines_what_is_not_ours(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "data.csv").write_text("1,2")
    txt_folder = tmp_path / "texts"
    txt_folder.mkdir()
    (txt_folder / "a.txt").write_text("a")
    (txt_folder / "b").write_bytes(b"\x02" * 400)
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "data.csv")) is None
    assert get_reader(str(txt_folder)) is None
    assert get_reader(str(tmp_path / "does-not-exist.nii.gz")) is None
    assert get_reader([str(tmp_path / "notes.txt"), str(txt_folder)]) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert get_reader(str(empty)) is None


def test_reader_for_nifti_gives_image_layer(tmp_path):
    nib.save(
        nib.Nifti1Image(np.ones((4, 5, 3), np.float32), np.diag([2.0, 1.0, 5.0, 1.0])),
        tmp_path / "a.nii.gz",
    )
    read = get_reader(str(tmp_path / "a.nii.gz"))
    assert read is not None
    [(data, kwargs, kind)] = read(str(tmp_path / "a.nii.gz"))
    assert kind == "image" and data.shape == (3, 5, 4)
    assert kwargs["name"] == "a" and kwargs["colormap"] == "gray"
    assert tuple(kwargs["scale"]) == (5.0, 1.0, 2.0)
    meta = kwargs["metadata"]["mtssl_scan"]
    assert meta["format"] == "nifti"
    json.dumps(meta)  # layer metadata must survive a JSON round trip (workspace, sessions)


def test_reader_for_dicom_folder_and_extensionless_file(tmp_path, factories):
    factories.write_series(
        tmp_path / "d",
        factories.coded_raw((3, 5, 6)),
        row_dir=np.array([1.0, 0, 0]),
        col_dir=np.array([0, 1.0, 0]),
        origin=np.zeros(3),
        slice_step=2.0,
    )
    (tmp_path / "d" / "README.txt").write_text("x")
    assert get_reader(str(tmp_path / "d")) is not None
    [(data, kwargs, kind)] = get_reader(str(tmp_path / "d"))(str(tmp_path / "d"))
    assert kind == "image" and data.shape == (3, 5, 6) and kwargs["name"] == "chest"
    bare = next(p for p in (tmp_path / "d").iterdir() if p.suffix == "" and p.name != "README")
    assert get_reader(str(bare)) is not None


def test_reader_for_png_folder(tmp_path):
    for i in range(3):
        iio.imwrite(tmp_path / f"{i}.png", np.full((4, 4), i, np.uint8))
    layers = get_reader(str(tmp_path))(str(tmp_path))
    assert layers[0][0].shape == (3, 4, 4)


def test_reader_for_dataset_folder_limits_cases(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for i in range(6):
        nib.save(
            nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)),
            tmp_path / "imagesTr" / f"c{i}.nii.gz",
        )
        nib.save(
            nib.Nifti1Image(np.ones((4, 4, 2), np.uint8), np.eye(4)),
            tmp_path / "labelsTr" / f"c{i}.nii.gz",
        )
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "x"}}))
    read = get_reader(str(tmp_path))
    assert read is not None
    with pytest.warns(UserWarning, match="first 4 of 6 cases"):
        layers = read(str(tmp_path))
    assert [(k, kw["name"]) for _, kw, k in layers][:2] == [
        ("image", "c0"),
        ("labels", "c0 labels"),
    ]
    assert len(layers) == 8
    assert "mtssl_note" in layers[0][1]["metadata"]
    assert len(reader(str(tmp_path), max_cases=6)) == 12


def test_reader_raises_scan_read_error_for_our_broken_file(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b broken")
    read = get_reader(str(tmp_path / "bad.nii.gz"))
    assert read is not None
    with pytest.raises(ScanReadError, match="bad.nii.gz"):
        read(str(tmp_path / "bad.nii.gz"))


def test_nifti_writer_restores_scan_geometry(tmp_path, factories):
    affine = factories.oblique_affine()
    factories.save_nifti(
        tmp_path / "img.nii.gz",
        np.random.default_rng(0).random((5, 6, 4)).astype(np.float32),
        affine,
    )
    [(data, kwargs, _)] = get_reader(str(tmp_path / "img.nii.gz"))(str(tmp_path / "img.nii.gz"))
    labels = (data > 0.5).astype(np.uint8)
    # The widgets copy the image metadata onto the labels layer; napari passes it back here.
    attributes = {"name": "img labels", "scale": kwargs["scale"], "metadata": kwargs["metadata"]}
    out = write_labels_nifti(str(tmp_path / "out.nii.gz"), labels, attributes)
    assert out == [str(tmp_path / "out.nii.gz")]
    np.testing.assert_allclose(nib.load(out[0]).affine, affine, atol=1e-6)
    [scan] = read_scans(tmp_path / "img.nii.gz")
    np.testing.assert_array_equal(read_labels(out[0], like=scan), labels)


def test_writers_without_scan_metadata_use_the_layer_scale(tmp_path):
    labels = np.zeros((3, 4, 5), np.uint8)
    labels[1, 2, 3] = 2
    attributes = {"name": "l", "scale": (4.0, 0.5, 0.75), "metadata": {}}
    [path] = write_labels_nifti(str(tmp_path / "l"), labels, attributes)
    assert path.endswith(".nii.gz")
    assert nib.load(path).header.get_zooms() == pytest.approx((0.75, 0.5, 4.0))
    np.testing.assert_array_equal(read_labels(path), labels)
    [tif] = write_labels_tiff(str(tmp_path / "l.tif"), labels, attributes)
    assert read_scans(tif)[0].spacing == pytest.approx((4.0, 0.5, 0.75))
    np.testing.assert_array_equal(read_labels(tif), labels)
    [flat] = write_labels_tiff(str(tmp_path / "flat.tif"), labels[1], {"scale": (0.5, 0.75)})
    assert read_labels(flat).shape == (1, 4, 5)


def test_through_npe2_manifest(tmp_path):
    """The manifest's python_name paths resolve and napari's plugin machinery uses them."""
    npe2 = pytest.importorskip("npe2")
    npe2.PluginManager.instance().discover()
    nib.save(nib.Nifti1Image(np.ones((4, 5, 3), np.float32), np.eye(4)), tmp_path / "a.nii.gz")
    layers = npe2.read([str(tmp_path / "a.nii.gz")], stack=False, plugin_name="napari-mtssl")
    assert [(d.shape, k) for d, _, k in layers] == [((3, 5, 4), "image")]
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(ValueError, match="refused"):
        npe2.read([str(tmp_path / "t.txt")], stack=False, plugin_name="napari-mtssl")
    labels = np.zeros((3, 5, 4), np.uint8)
    attrs = {"name": "l", "scale": (1, 1, 1), "metadata": layers[0][1]["metadata"]}
    out = npe2.write(
        str(tmp_path / "o.nii.gz"), [(labels, attrs, "labels")], plugin_name="napari-mtssl"
    )
    assert out == [str(tmp_path / "o.nii.gz")]
