"""A DICOM folder and a NIfTI file open through the plugin in a real napari (under Xvfb) with the
same orientation and physical scale; the rendered canvas shows the marker where the anatomy is.

The phantom has a bright block at the patient's right-anterior corner of every axial slice. In
the radiological view the plugin uses (LPS, (z, y, x)), patient right is on the left of the
screen and anterior at the top, so the block must be drawn in the top-left of the canvas.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("napari")
if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    pytest.skip(
        "needs a display for napari's OpenGL canvas (run under xvfb-run)", allow_module_level=True
    )

pytestmark = pytest.mark.gui

SHAPE = (6, 40, 50)  # slices, rows, columns
SPACING = (3.0, 0.9, 0.7)  # mm: slice step, row spacing, column spacing


def phantom() -> np.ndarray:
    z = np.arange(SHAPE[0])[:, None, None]
    vol = np.zeros(SHAPE, np.int16) + (100 + 10 * z).astype(np.int16)
    vol[:, 3:12, 4:16] = 1000  # rows near anterior, columns near patient right
    return vol


def write_dicom_axial(folder: Path, vol: np.ndarray) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir()
    series = generate_uid()
    rng = np.random.default_rng(1)
    for k in rng.permutation(vol.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription = "MR", series, "axial phantom"
        ds.StudyInstanceUID = generate_uid()
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # rows to L, columns to P
        ds.ImagePositionPatient = [-20.0, -15.0, 40.0 + SPACING[0] * k]
        ds.PixelSpacing = [SPACING[1], SPACING[2]]  # row spacing, column spacing
        ds.SliceThickness = 5.0  # deliberately not the slice step
        ds.InstanceNumber = int(k) + 1
        ds.Rows, ds.Columns = vol.shape[1:]
        ds.PixelData = vol[k].astype("<i2").tobytes()
        ds.save_as(folder / f"{rng.integers(1e6):06d}", enforce_file_format=True)


def write_nifti_flipped(path: Path, vol: np.ndarray) -> None:
    """The same patient as the DICOM, stored RAS-style with x reversed on disk (as converters do)."""
    data = np.transpose(vol, (2, 1, 0))[::-1]  # (x, y, z), x reversed: i runs towards patient right
    sz, sy, sx = SPACING
    lps = np.array(
        [
            [-sx, 0, 0, -20.0 + sx * (vol.shape[2] - 1)],
            [0, sy, 0, -15.0],
            [0, 0, sz, 40.0],
            [0, 0, 0, 1],
        ]
    )
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    img = nib.Nifti1Image(np.ascontiguousarray(data), ras)
    img.header.set_qform(ras, code=1)
    img.header.set_sform(ras, code=1)
    nib.save(img, path)


def _bright_centroid(shot: np.ndarray) -> tuple[float, float]:
    gray = shot[..., :3].mean(-1)
    gray[-40:] = 0  # the text overlay at the bottom
    ys, xs = np.nonzero(gray > 0.8 * gray.max())
    return ys.mean() / gray.shape[0], xs.mean() / gray.shape[1]


def test_dicom_folder_and_nifti_open_the_same_way(make_napari_viewer, tmp_path):
    vol = phantom()
    write_dicom_axial(tmp_path / "dicom", vol)
    write_nifti_flipped(tmp_path / "phantom.nii.gz", vol)

    viewer = make_napari_viewer(show=True)  # an unshown canvas renders black
    dcm_layers = viewer.open(tmp_path / "dicom", plugin="napari-mtssl")
    nii_layers = viewer.open(tmp_path / "phantom.nii.gz", plugin="napari-mtssl")
    assert len(dcm_layers) == 1 and len(nii_layers) == 1
    dcm, nii = dcm_layers[0], nii_layers[0]
    assert dcm.name == "axial phantom"

    np.testing.assert_allclose(dcm.scale, SPACING)
    np.testing.assert_allclose(nii.scale, SPACING)
    np.testing.assert_array_equal(np.asarray(dcm.data), vol.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(nii.data), vol.astype(np.float32))
    np.testing.assert_allclose(
        dcm.metadata["mtssl_scan"]["affine"], nii.metadata["mtssl_scan"]["affine"], atol=1e-4
    )

    # What a person sees: each layer alone, the marker in the top-left of the canvas.
    viewer.dims.set_current_step(0, 2)
    shots = []
    for shown, hidden in ((nii, dcm), (dcm, nii)):
        shown.visible, hidden.visible = True, False
        viewer.canvas.overlays.text.visible = True
        viewer.canvas.overlays.text.text = (
            f"{shown.name}: scale {' x '.join(f'{s:g}' for s in shown.scale)} mm (z, y, x)"
        )
        viewer.reset_view()
        shot = viewer.screenshot(canvas_only=True, flash=False)
        row, col = _bright_centroid(shot)
        assert row < 0.5 and col < 0.5, (shown.name, row, col)
        shots.append(shot)
    out = os.environ.get("MTSSL_SCREENSHOTS")
    if out:  # docs figure: what the two files look like, side by side
        import imageio.v3 as iio

        Path(out).mkdir(parents=True, exist_ok=True)
        gap = np.full((shots[0].shape[0], 8, 4), 255, np.uint8)
        tmp = Path(out) / ".readers.part.png"
        iio.imwrite(tmp, np.concatenate([shots[0], gap, shots[1]], axis=1))
        os.replace(tmp, Path(out) / "readers.png")  # never half written


def test_sample_study_opens_through_napari(make_napari_viewer):
    """File > Open Sample > MTSSL segmentation > Synthetic study, as napari itself calls it."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-mtssl", "study")
    images = [ly for ly in viewer.layers if ly.__class__.__name__ == "Image"]
    labels = [ly for ly in viewer.layers if ly.__class__.__name__ == "Labels"]
    assert len(images) == 4 and len(labels) == 2
    for layer in labels:
        image = viewer.layers[layer.name.replace(" labels", "").replace("_labels", "")]
        assert layer.data.shape == image.data.shape
        np.testing.assert_allclose(layer.scale, image.scale)
        assert len(np.unique(layer.data)) > 2  # more than one structure
