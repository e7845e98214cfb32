"""npe2 reader and writers, exercised as plain functions (no viewer needed)."""

from __future__ import annotations

import json

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_mtssl.io import ScanReadError, read_labels, read_scans
from napari_mtssl.io.napari_io import (
    MASK_GUESS_KEY,
    NAMES_KEY,
    PROBE_FILES,
    get_reader,
    labels_layer,
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


def test_reader_for_png_folder_says_why_it_opened_as_labels(tmp_path):
    for i in range(4):
        iio.imwrite(tmp_path / f"{i}.png", np.full((4, 4), 85 * i, np.uint8))
    with pytest.warns(UserWarning, match="opened as a Labels layer because it holds only 4"):
        [(data, kwargs, kind)] = get_reader(str(tmp_path))(str(tmp_path))
    assert data.shape == (4, 4, 4) and kind == "labels"
    assert "4 whole values (0, 85, 170, 255)" in kwargs["metadata"][MASK_GUESS_KEY]


def test_a_mask_named_so_opens_as_labels_quietly(tmp_path, recwarn):
    mask = np.zeros((4, 5, 3), np.uint8)
    mask[1:3, 1:4, 1] = 2
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "c0_label.nii.gz")
    [(_, kwargs, kind)] = reader(str(tmp_path / "c0_label.nii.gz"))
    assert kind == "labels"
    assert "name contains 'label'" in kwargs["metadata"][MASK_GUESS_KEY]
    assert not [w for w in recwarn if "Labels layer" in str(w.message)]


def test_a_mask_file_names_its_classes_from_the_dataset_json_beside_it(tmp_path):
    """labelsTr/case.nii.gz of a Decathlon folder opened on its own: napari's status bar shows
    the class name under the pointer (the layer's features), and a DICOM-SEG saved from it
    names its segments (the layer's metadata)."""
    (tmp_path / "labelsTr").mkdir()
    mask = np.zeros((6, 6, 2), np.uint8)
    mask[1:3, 1:3, 0], mask[3:5, 3:5, 1] = 1, 3
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "labelsTr" / "case_001.nii.gz")
    names = {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle"}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": names}))
    [(_, kwargs, kind)] = reader(str(tmp_path / "labelsTr" / "case_001.nii.gz"))
    assert kind == "labels"
    assert kwargs["features"] == {"index": [0, 1, 2, 3], "class": list(names.values())}
    assert kwargs["metadata"][NAMES_KEY] == names

    # a dataset.json that does not parse: the mask still opens, without names
    (tmp_path / "dataset.json").write_text("{not json")
    [(_, kwargs, kind)] = reader(str(tmp_path / "labelsTr" / "case_001.nii.gz"))
    assert kind == "labels" and "features" not in kwargs
    assert NAMES_KEY not in kwargs["metadata"]


def test_labels_layer_names_classes_in_napari():
    """The status bar under the pointer says the class's name (napari reads the features)."""
    layers = pytest.importorskip("napari.layers", reason="napari is not installed")
    from napari_mtssl.io.scan import Scan

    labels = np.zeros((2, 4, 4), np.uint8)
    labels[0, 1, 1] = 2
    scan = Scan(np.zeros((2, 4, 4), np.float32), (1.0, 1.0, 1.0), name="c0")
    data, kwargs, _ = labels_layer(labels, scan, names={0: "background", 2: "myocardium"})
    layer = layers.Labels(data, **kwargs)
    status = layer.get_status((0, 1, 1), world=False)
    assert "myocardium" in str(status)


def _pictures_and_scans(tmp_path, factories):
    """Files the plugin means (scans) and files it leaves to napari (pictures)."""
    rng = np.random.default_rng(0)
    scans, pictures = tmp_path / "scans", tmp_path / "pictures"
    scans.mkdir()
    pictures.mkdir()
    factories.save_nifti(scans / "ct.nii.gz", rng.random((6, 5, 4), np.float32), np.eye(4))
    factories.write_series(
        scans / "series",
        factories.coded_raw((3, 5, 6)),
        row_dir=np.array([1.0, 0, 0]),
        col_dir=np.array([0, 1.0, 0]),
        origin=np.zeros(3),
        slice_step=2.0,
    )
    (scans / "dataset" / "imagesTr").mkdir(parents=True)
    factories.save_nifti(
        scans / "dataset" / "imagesTr" / "c0.nii.gz", rng.random((6, 5, 4), np.float32), np.eye(4)
    )
    tifffile.imwrite(
        scans / "stack.tif", rng.integers(0, 4000, (5, 8, 9), np.uint16), photometric="minisblack"
    )
    (scans / "slices").mkdir()
    for i in range(3):
        iio.imwrite(scans / "slices" / f"s{i}.png", rng.integers(0, 255, (8, 9), np.uint8))
    iio.imwrite(pictures / "photo.png", rng.integers(0, 255, (8, 9, 3), np.uint8))
    iio.imwrite(pictures / "grey.png", rng.integers(0, 255, (8, 9), np.uint8))
    tifffile.imwrite(pictures / "colour.tif", rng.integers(0, 255, (8, 9, 3), np.uint8))
    tifffile.imwrite(pictures / "flat.tif", rng.integers(0, 255, (8, 9), np.uint8))
    (pictures / "holiday").mkdir()
    for i in range(3):
        iio.imwrite(pictures / "holiday" / f"{i}.png", rng.integers(0, 255, (8, 9, 3), np.uint8))
    return {
        "scans": [scans / n for n in ("ct.nii.gz", "series", "dataset", "stack.tif", "slices")],
        "pictures": [pictures / n for n in ("photo.png", "grey.png", "colour.tif", "flat.tif")]
        + [pictures / "holiday"],
        "dicom_file": next((scans / "series").iterdir()),
    }


def test_reader_claims_scans_and_leaves_pictures_to_napari(tmp_path, factories):
    files = _pictures_and_scans(tmp_path, factories)
    for path in [*files["scans"], files["dicom_file"]]:
        assert callable(get_reader(str(path))), path
    for path in files["pictures"]:
        assert get_reader(str(path)) is None, path


def test_napari_does_not_offer_the_plugin_for_pictures(tmp_path, factories):
    """npe2 picks readers by file name pattern before any plugin code runs: an ordinary PNG
    must not match ours, or napari asks the person which reader to use."""
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManager.instance()
    pm.discover()
    files = _pictures_and_scans(tmp_path, factories)

    def offered(path):
        return "napari-mtssl" in {r.plugin_name for r in pm.iter_compatible_readers([str(path)])}

    assert not offered(tmp_path / "pictures" / "photo.png")
    assert not offered(tmp_path / "pictures" / "photo.JPG")
    assert not offered(tmp_path / "notes.txt")
    for path in files["scans"]:
        assert offered(path), path
    assert offered(tmp_path / "IM0001.DCM")
    with pytest.raises(ValueError):
        npe2.read(
            [str(tmp_path / "pictures" / "photo.png")], stack=False, plugin_name="napari-mtssl"
        )


def test_folder_probe_opens_few_files(tmp_path, monkeypatch):
    """Deciding whether a big folder is a DICOM series looks at a few files, not all of them."""
    from napari_mtssl.io import dicom

    for i in range(300):
        (tmp_path / f"f{i:03d}").write_bytes(b"\x02" * 400)
    looked: list[str] = []
    real = dicom._read_header

    def counting(path):
        looked.append(str(path))
        return real(path)

    monkeypatch.setattr(dicom, "_read_header", counting)
    assert get_reader(str(tmp_path)) is None
    assert 0 < len(looked) <= PROBE_FILES


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
    assert layers[1][1]["features"] == {"index": [0, 1], "class": ["bg", "x"]}
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
    with pytest.raises(ValueError, match="not a compatible reader"):  # not even offered
        npe2.read([str(tmp_path / "t.txt")], stack=False, plugin_name="napari-mtssl")
    tifffile.imwrite(tmp_path / "colour.tif", np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="refused"):  # offered by name, declined by get_reader
        npe2.read([str(tmp_path / "colour.tif")], stack=False, plugin_name="napari-mtssl")
    labels = np.zeros((3, 5, 4), np.uint8)
    attrs = {"name": "l", "scale": (1, 1, 1), "metadata": layers[0][1]["metadata"]}
    out = npe2.write(
        str(tmp_path / "o.nii.gz"), [(labels, attrs, "labels")], plugin_name="napari-mtssl"
    )
    assert out == [str(tmp_path / "o.nii.gz")]
