"""DICOM-SEG: one segment per class, frames on the right source images, read back two ways."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("highdicom")

import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402

from napari_mtssl.export import ExportError  # noqa: E402
from napari_mtssl.export.dicomseg import write_dicom_seg  # noqa: E402
from napari_mtssl.io import read_scans  # noqa: E402
from napari_mtssl.io._orient import from_canonical  # noqa: E402
from tests.io.conftest import rotation, write_series  # noqa: E402

NAMES = {0: "background", 1: "liver", 2: "tumour"}


@pytest.fixture
def series(tmp_path):
    """An oblique series with non-unit spacing, files under shuffled names (write_series)."""
    raw = (np.arange(6 * 12 * 10).reshape(6, 12, 10) % 300).astype(np.int16)
    rot = rotation(0.3, 0.5)
    folder = tmp_path / "series"
    write_series(
        folder,
        raw,
        row_dir=rot[:, 0],
        col_dir=rot[:, 1],
        origin=np.array([10.0, -20.0, 5.0]),
        slice_step=3.3,
        pixel_spacing=(0.8, 1.1),
    )
    (scan,) = read_scans(folder)
    return scan


def _mask(shape):
    lab = np.zeros(shape, np.uint8)
    lab[1, 2:6, 3:7] = 1
    lab[4, 5:9, 1:4] = 2
    lab[4, 0:2, 0:2] = 1
    return lab


def test_segments_named_and_frames_on_their_source_images(series, tmp_path):
    lab = _mask(series.shape)
    out = tmp_path / "seg.dcm"
    write_dicom_seg(
        lab,
        series.meta,
        out,
        label_names=NAMES,
        algorithm={"model": "student", "run": "r1", "round": 2},
    )
    seg = hd.seg.segread(out)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "tumour"]
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "napari-mtssl"
    src0 = pydicom.dcmread(series.meta["frames"][0][0])
    assert seg.StudyInstanceUID == src0.StudyInstanceUID
    assert seg.FrameOfReferenceUID == src0.FrameOfReferenceUID
    # every frame: its referenced source image, at that image's position, holds the mask
    stack = from_canonical(lab, series.meta["dicom_transform"])  # the series' own order
    by_uid = {}
    for k, (path, _) in enumerate(series.meta["frames"]):
        ds = pydicom.dcmread(path)
        by_uid[ds.SOPInstanceUID] = (k, ds)
    plain = pydicom.dcmread(out)
    for i, item in enumerate(plain.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k, src = by_uid[uid]
        pos = item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(
            [float(v) for v in pos], [float(v) for v in src.ImagePositionPatient], atol=1e-4
        )
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        frame = seg.pixel_array[i] if seg.pixel_array.ndim == 3 else seg.pixel_array
        np.testing.assert_array_equal(frame > 0, stack[k] == number)
    # and through highdicom's own reader, per source image
    for uid, (k, _) in by_uid.items():
        pix = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid],
            segment_numbers=[1, 2],
            assert_missing_frames_are_empty=True,
        )
        got = np.zeros(stack.shape[1:], np.uint8)
        for s in (1, 2):
            got[pix[0, :, :, s - 1] > 0] = s
        np.testing.assert_array_equal(got, stack[k])


def test_refusals(series, tmp_path):
    lab = _mask(series.shape)
    with pytest.raises(ExportError, match="NIfTI"):
        write_dicom_seg(lab, {"format": "nifti"}, tmp_path / "x.dcm", label_names=NAMES)
    with pytest.raises(ExportError, match="empty"):
        write_dicom_seg(np.zeros_like(lab), series.meta, tmp_path / "x.dcm", label_names=NAMES)
    with pytest.raises(ExportError, match="no name"):
        write_dicom_seg(lab * 2, series.meta, tmp_path / "x.dcm", label_names=NAMES)
    assert not (tmp_path / "x.dcm").exists()


CARDIAC = {0: "background", 1: "RV", 2: "Myocardium", 3: "left_ventricle", 4: "scar", 5: "blob"}


def _coded(item):
    cat = item.SegmentedPropertyCategoryCodeSequence[0]
    typ = item.SegmentedPropertyTypeCodeSequence[0]
    return (cat.CodeValue, cat.CodingSchemeDesignator), (
        typ.CodeValue,
        typ.CodingSchemeDesignator,
        typ.CodeMeaning,
    )


def test_segments_coded_coloured_and_named(series, tmp_path):
    from napari_mtssl.colours import class_dicom_cielab
    from napari_mtssl.export.dicomseg import (
        ANATOMICAL_STRUCTURE,
        DEFAULT_CODES,
        TISSUE,
    )

    lab = np.zeros(series.shape, np.uint8)
    for c in range(1, 6):
        lab[c % series.shape[0], c : c + 2, 1:4] = c
    out = tmp_path / "cardiac.dcm"
    write_dicom_seg(
        lab,
        series.meta,
        out,
        label_names=CARDIAC,
        codes={"scar": ("1234567", "99LOCAL", "Scar tissue")},
    )
    ds = pydicom.dcmread(out)
    items = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
    assert [items[n].SegmentLabel for n in sorted(items)] == [CARDIAC[c] for c in range(1, 6)]
    anatomy = ANATOMICAL_STRUCTURE[:2]
    assert _coded(items[1]) == (anatomy, ("53085002", "SCT", "Right ventricle"))
    assert _coded(items[2]) == (anatomy, ("74281007", "SCT", "Myocardium"))
    assert _coded(items[3]) == (anatomy, ("87878005", "SCT", "Left ventricle"))
    assert _coded(items[3])[1] == DEFAULT_CODES["lv"][1]
    assert _coded(items[4]) == (anatomy, ("1234567", "99LOCAL", "Scar tissue"))  # the user's
    assert _coded(items[5]) == (TISSUE[:2], TISSUE)  # nobody coded "blob": generic
    for n in range(1, 6):  # segment n is class n here: the palette colour of that class
        assert tuple(int(v) for v in items[n].RecommendedDisplayCIELabValue) == (
            class_dicom_cielab(n)
        )
    # highdicom reads the same back, colour included
    seg = hd.seg.segread(out)
    assert seg.get_segment_description(2).segmented_property_type.value == "74281007"


def test_user_codes_by_index_and_category(series, tmp_path):
    lab = _mask(series.shape)
    out = tmp_path / "seg.dcm"
    write_dicom_seg(
        lab,
        series.meta,
        out,
        label_names=NAMES,
        codes={
            1: ("10200004", "SCT", "Liver"),
            "Tumour": {
                "type": ("52988006", "SCT", "Lesion"),
                "category": ("49755003", "SCT", "Morphologically Abnormal Structure"),
            },
        },
    )
    items = pydicom.dcmread(out).SegmentSequence
    assert _coded(items[0])[1] == ("10200004", "SCT", "Liver")
    assert _coded(items[1]) == (("49755003", "SCT"), ("52988006", "SCT", "Lesion"))


def test_default_table_names_and_refusals(series, tmp_path):
    from napari_mtssl.export.dicomseg import segment_codes

    coded = segment_codes({0: "background", 1: "Left Ventricle", 2: "TUMOR", 3: "lung-nodule"})
    assert coded[1][1][0] == "87878005"
    assert coded[2] == (
        ("49755003", "SCT", "Morphologically Abnormal Structure"),
        ("108369006", "SCT", "Neoplasm"),
    )
    assert coded[3][1][2] == "Tissue"
    assert 0 not in coded
    lab = _mask(series.shape)
    with pytest.raises(ExportError, match="no class"):
        write_dicom_seg(
            lab, series.meta, tmp_path / "x.dcm", label_names=NAMES, codes={"livr": ("1", "S", "m")}
        )
    with pytest.raises(ExportError, match="code value, coding scheme"):
        write_dicom_seg(
            lab, series.meta, tmp_path / "x.dcm", label_names=NAMES, codes={1: ("10200004",)}
        )
    assert not (tmp_path / "x.dcm").exists()


def test_default_codes_are_the_dicom_standards():
    """Every code of the default table is the concept the DICOM standard's code dictionary
    (as pydicom ships it) gives that meaning; "Myocardium" (SNOMED CT 74281007, "Myocardium
    structure") is the one concept the standard's segmentation contexts do not list."""
    from pydicom.sr.codedict import codes

    from napari_mtssl.export.dicomseg import DEFAULT_CODES

    keyword = {
        "Left ventricle": "LeftVentricle",
        "Right ventricle": "RightVentricle",
        "Left ventricle myocardium": "LeftVentricleMyocardium",
        "Left atrium": "LeftAtrium",
        "Right atrium": "RightAtrium",
        "Heart": "Heart",
        "Aorta": "Aorta",
        "Liver": "Liver",
        "Spleen": "Spleen",
        "Kidney": "Kidney",
        "Lung": "Lung",
        "Pancreas": "Pancreas",
        "Neoplasm": "Neoplasm",
        "Lesion": "Lesion",
        "Mass": "Mass",
        "Anatomical Structure": "AnatomicalStructure",
        "Morphologically Abnormal Structure": "MorphologicallyAbnormalStructure",
    }
    seen = set()
    for category, kind in DEFAULT_CODES.values():
        for value, scheme, meaning in (category, kind):
            assert scheme == "SCT"
            if value == "74281007":
                continue
            assert getattr(codes.SCT, keyword[meaning]).value == value, meaning
            seen.add(meaning)
    assert seen == set(keyword)
