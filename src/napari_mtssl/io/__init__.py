"""Scans and labels in and out: NIfTI, DICOM, TIFF/PNG stacks and dataset folders.

No torch, no Qt, no napari. Every reader returns :class:`Scan` objects in the project's canonical
frame ((z, y, x), closest LPS orientation for data with a patient frame); every failure is a
:class:`ScanReadError` or :class:`LabelError` whose message names the file and the problem.
"""

from __future__ import annotations

from . import formats
from ._common import is_dataset_folder
from ._orient import grid_affine
from .dataset import Dataset, DatasetCase, open_dataset
from .dicom import is_dicom_file
from .files import read_labels, read_scans, write_labels
from .scan import LabelError, Scan, ScanReadError, validate_labels

__all__ = [
    "Dataset",
    "DatasetCase",
    "LabelError",
    "Scan",
    "ScanReadError",
    "grid_affine",
    "is_dataset_folder",
    "is_dicom_file",
    "open_dataset",
    "read_labels",
    "read_scans",
    "validate_labels",
    "write_labels",
    "formats",
]
