"""Labels saved from napari land voxel for voxel on the scan they belong to: a mask painted by a
person over an opened NIfTI (with the plugin's docks open or in plain napari), and the plugin's
own prediction layers (issues: masks saved from napari were mirrored; a labels layer made in
plain napari was saved with a made-up affine, far from its scan)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


def _ras_flipped_nifti(path):
    """A NIfTI stored with x reversed and anisotropic voxels, with a marker at known voxels."""
    data = np.zeros((30, 24, 5), np.int16)  # file order (i, j, k)
    data[2:6, 3:9, :] = 500  # a block near the file's first i, first j
    affine = np.diag([-0.8, 1.1, 4.0, 1.0])
    affine[:3, 3] = [20.0, -5.0, 3.0]
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(path))
    return data


def test_painted_mask_saves_in_the_source_geometry(make_napari_viewer, tmp_path):
    from napari_mtssl.widgets._session import session_for

    src = tmp_path / "scan.nii.gz"
    data = _ras_flipped_nifti(src)
    viewer = make_napari_viewer()
    session_for(viewer)  # the plugin's session: opened with any of its docks
    (image,) = viewer.open(str(src), plugin="napari-mtssl")
    # a person paints the bright block in a new labels layer over the scan
    painted = (np.asarray(image.data) > 100).astype(np.uint8)
    layer = viewer.add_labels(np.zeros_like(painted), name="my mask")
    assert "mtssl_scan" in layer.metadata  # adopted the scan's geometry
    layer.data = painted
    out = tmp_path / "mask.nii.gz"
    layer.save(str(out), plugin="napari-mtssl")
    saved = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(saved.dataobj) > 0, data > 100)
    np.testing.assert_allclose(saved.affine, nib.load(str(src)).affine, atol=1e-5)


def _oblique_scan(path, shape=(20, 16, 6), seed=0):
    """A NIfTI with a rotated, flipped, axis-swapped affine and an origin far from zero."""
    from tests.io.conftest import oblique_affine, save_nifti

    data = np.random.default_rng(seed).integers(0, 1000, shape).astype(np.int16)
    affine = oblique_affine()
    save_nifti(path, data, affine)
    return data, affine


def test_a_new_labels_layer_in_plain_napari_saves_in_the_scan_geometry(
    make_napari_viewer, tmp_path
):
    """The plugin's docks are not open: napari's "New labels layer" over a scan opened through
    the plugin carries no geometry, and the NIfTI writer finds the scan by its shape."""
    src = tmp_path / "scan.nii.gz"
    data, affine = _oblique_scan(src)
    _oblique_scan(tmp_path / "other.nii.gz", shape=(9, 11, 7), seed=1)
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(src), plugin="napari-mtssl")
    viewer.open(str(tmp_path / "other.nii.gz"), plugin="napari-mtssl")  # another shape
    viewer.layers.selection.active = image
    viewer._new_labels()  # what Layers > New labels layer (and its button) does
    layer = viewer.layers[-1]
    assert layer._type_string == "labels" and "mtssl_scan" not in layer.metadata
    painted = (np.asarray(image.data) > 700).astype(np.uint8)
    painted[np.asarray(image.data) < 50] = 2
    layer.data = painted
    out = tmp_path / "mask.nii.gz"
    layer.save(str(out), plugin="napari-mtssl")
    saved = nib.load(str(out))
    np.testing.assert_allclose(saved.affine, affine, atol=1e-5)
    assert saved.shape == data.shape
    file_order = np.asarray(saved.dataobj)  # the file's own voxel order, as other tools read it
    np.testing.assert_array_equal(file_order == 1, data > 700)
    np.testing.assert_array_equal(file_order == 2, data < 50)
    from napari_mtssl.io import read_labels, read_scans

    np.testing.assert_array_equal(read_labels(out, like=read_scans(src)[0]), painted)


def test_labels_of_no_known_scan_are_refused_not_misplaced(make_napari_viewer, tmp_path):
    from napari_mtssl.io.napari_io import SaveRefusedError

    _oblique_scan(tmp_path / "a.nii.gz")
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(tmp_path / "a.nii.gz"), plugin="napari-mtssl")
    stray = viewer.add_labels(np.ones((5, 7, 9), np.uint8), name="stray")
    out = tmp_path / "stray.nii.gz"
    with pytest.raises(SaveRefusedError, match=r"stray: .*no scan opened through the plugin"):
        stray.save(str(out), plugin="napari-mtssl")
    assert not out.exists()
    # the shape matches, the scale set on the layer does not: not this scan either
    scaled = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="scaled", scale=(9, 9, 9))
    with pytest.raises(SaveRefusedError, match="scaled: .*scale"):
        scaled.save(str(out), plugin="napari-mtssl")
    # a TIFF needs no patient frame: it still saves
    tif = tmp_path / "stray.tif"
    stray.save(str(tif), plugin="napari-mtssl")
    assert tif.is_file()
    # two scans of the same shape that lie differently: which one is meant is unknown
    from tests.io.conftest import save_nifti

    moved = nib.load(str(tmp_path / "a.nii.gz"))
    shifted = moved.affine.copy()
    shifted[:3, 3] += 40.0
    save_nifti(tmp_path / "b.nii.gz", np.asarray(moved.dataobj), shifted)
    viewer.open(str(tmp_path / "b.nii.gz"), plugin="napari-mtssl")
    drawn = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="drawn")
    with pytest.raises(SaveRefusedError, match=r"drawn: .*lie differently \('a', 'b'\)"):
        drawn.save(str(out), plugin="napari-mtssl")
    assert not out.exists()


def test_prediction_layers_save_in_the_source_geometry(sample_docks, qtbot, tmp_path):
    """A layer the plugin shows over a workspace scan carries that scan's geometry."""
    from napari_mtssl.widgets._state import SCAN_META_KEY, scan_geometry, show_labels

    d = sample_docks
    ws = d.session.workspace
    sid = ws.scan_ids()[0]
    mask = np.zeros(ws.record(sid).shape, np.uint8)
    mask[2, 10:20, 30:40] = 1
    layer = show_labels(d.viewer, mask, f"{sid}_test", sid, (1.0, 1.0, 1.0), "prediction", ws=ws)
    assert layer.metadata[SCAN_META_KEY] == scan_geometry(d.viewer, sid)
    out = tmp_path / "pred.nii.gz"
    layer.save(str(out), plugin="napari-mtssl")
    from napari_mtssl.io import read_labels

    back = read_labels(out, like=ws.load_scan(sid))
    np.testing.assert_array_equal(back, mask)


@pytest.mark.parametrize("docks_open", [True, False], ids=["with-docks", "plain-napari"])
def test_a_mask_painted_on_a_dicom_series_saves_as_dicom_seg(
    make_napari_viewer, tmp_path, docks_open
):
    """With the plugin's docks open the new layer adopts the scan's geometry; in plain napari
    the writer finds the scan itself."""
    hd = pytest.importorskip("highdicom")
    from napari_mtssl.io._orient import from_canonical
    from napari_mtssl.widgets._session import session_for
    from tests.io.conftest import rotation, write_series

    raw = (np.arange(5 * 12 * 10).reshape(5, 12, 10) % 200).astype(np.int16)
    rot = rotation(0.2, 0.3)
    folder = tmp_path / "series"
    write_series(
        folder,
        raw,
        row_dir=rot[:, 0],
        col_dir=rot[:, 1],
        origin=np.array([0.0, 10.0, -5.0]),
        slice_step=2.0,
        pixel_spacing=(0.9, 0.7),
    )
    viewer = make_napari_viewer()
    if docks_open:
        session_for(viewer)
    (image,) = viewer.open(str(folder), plugin="napari-mtssl")
    layer = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="drawn")
    assert ("mtssl_scan" in layer.metadata) == docks_open
    painted = np.zeros(image.data.shape, np.uint8)
    painted[2, 3:7, 2:5] = 1
    layer.data = painted
    out = tmp_path / "drawn.dcm"
    layer.save(str(out), plugin="napari-mtssl")
    seg = hd.seg.segread(out)
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    stack = from_canonical(painted, image.metadata["mtssl_scan"]["dicom_transform"])
    import pydicom

    for k, (path, _) in enumerate(image.metadata["mtssl_scan"]["frames"]):
        uid = pydicom.dcmread(path).SOPInstanceUID
        pix = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid],
            segment_numbers=[1],
            assert_missing_frames_are_empty=True,
        )
        np.testing.assert_array_equal(pix[0, :, :, 0] > 0, stack[k] > 0)


@pytest.mark.slow
def test_export_button_and_save_all_labels(sample_docks, qtbot, tmp_path):
    from napari_mtssl import api

    d = sample_docks
    ws = d.session.workspace
    api.run(api.train(ws, api.make_config("tiny", device="cpu", tasks=["inpaint"]), "all"))
    out = tmp_path / "student.onnx"
    worker = d.compare.export_student(str(out))
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert out.is_file() and out.stat().st_size > 1000
    folder = tmp_path / "labels"
    folder.mkdir()
    written = d.study.save_all_labels(str(folder))
    assert written and all(p.endswith("_labels.nii.gz") for p in written)
    again = d.study.save_all_labels(str(folder))  # never replaces: refused, nothing written
    assert again is None
