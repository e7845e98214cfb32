"""TIFF stacks, PNG images and folders of numbered images."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_mtssl.io import read_labels, read_scans, write_labels


def test_multipage_tiff_stack_with_imagej_spacing(tmp_path):
    data = np.arange(4 * 6 * 5, dtype=np.uint16).reshape(4, 6, 5)
    tifffile.imwrite(
        tmp_path / "s.tif",
        data,
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.25),
        metadata={"spacing": 2.0, "unit": "mm", "axes": "ZYX"},
    )
    [scan] = read_scans(tmp_path / "s.tif")
    np.testing.assert_array_equal(scan.array, data)
    np.testing.assert_allclose(scan.spacing, (2.0, 0.25, 0.5))


def test_plain_tiff_spacing_is_one_and_inch_dpi_ignored(tmp_path):
    data = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    tifffile.imwrite(
        tmp_path / "p.tiff",
        data,
        photometric="minisblack",
        resolution=(72, 72),
        resolutionunit="INCH",
    )
    [scan] = read_scans(tmp_path / "p.tiff")
    np.testing.assert_array_equal(scan.array, data)
    assert scan.spacing == (1.0, 1.0, 1.0) and scan.modality == "unknown"


def test_single_png_and_rgb_to_gray(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    iio.imwrite(tmp_path / "g.png", gray)
    [scan] = read_scans(tmp_path / "g.png")
    assert scan.shape == (1, 4, 5)
    np.testing.assert_array_equal(scan.array[0], gray)
    rgb = np.stack([gray, gray, gray], axis=-1)
    iio.imwrite(tmp_path / "c.png", rgb)
    [scan] = read_scans(tmp_path / "c.png")
    assert scan.shape == (1, 4, 5) and scan.meta["converted_to_gray"]
    np.testing.assert_allclose(scan.array[0], gray, atol=1e-3)
    assert any("gray" in n for n in scan.meta["notes"])


def test_numbered_png_folder_natural_order(tmp_path):
    for i in (1, 2, 10, 3):
        iio.imwrite(tmp_path / f"slice{i}.png", np.full((6, 7), i, np.uint8))
    (tmp_path / "readme.txt").write_text("ignored")
    [scan] = read_scans(tmp_path)
    assert scan.shape == (4, 6, 7)
    assert [int(v) for v in scan.array[:, 0, 0]] == [1, 2, 3, 10]
    assert scan.name == tmp_path.name


def test_numbered_folder_with_mismatched_size(tmp_path):
    iio.imwrite(tmp_path / "1.png", np.zeros((6, 7), np.uint8))
    iio.imwrite(tmp_path / "2.png", np.zeros((6, 8), np.uint8))
    from napari_mtssl.io import ScanReadError

    with pytest.raises(ScanReadError, match="2.png.*differs"):
        read_scans(tmp_path)


def test_tiff_labels_round_trip(tmp_path):
    data = np.zeros((3, 8, 9), np.float32)
    tifffile.imwrite(tmp_path / "img.tif", data)
    [scan] = read_scans(tmp_path / "img.tif")
    labels = np.random.default_rng(0).integers(0, 3, scan.shape).astype(np.uint8)
    write_labels(labels, tmp_path / "lab.tif", like=scan)
    np.testing.assert_array_equal(read_labels(tmp_path / "lab.tif", like=scan), labels)
    # The written stack carries the scan's spacing, so it reopens at the same scale.
    big = np.zeros((2, 4, 4), np.uint16)
    big[0, 0, 0] = 300
    scan.spacing = (3.0, 0.5, 0.5)
    from napari_mtssl.io import Scan

    like = Scan(np.zeros((2, 4, 4), np.float32), spacing=(3.0, 0.5, 0.5))
    write_labels(big, tmp_path / "big.tiff", like=like)
    [again] = read_scans(tmp_path / "big.tiff")
    np.testing.assert_allclose(again.spacing, (3.0, 0.5, 0.5))
    assert read_labels(tmp_path / "big.tiff", like=like).dtype == np.uint16
