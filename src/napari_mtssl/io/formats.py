"""The file formats scans and masks come in, in one registry that every door asks.

Each format says which suffixes it owns, whether a file is one it can read (:meth:`can_read`),
whether one file of it is a whole scan (napari's own reader keeps single 2D pictures), and how
to read scans and read or write masks. :func:`read_scans`, :func:`read_labels` and
:func:`write_labels` (``napari_mtssl.io``), the napari reader hook, the dataset loader, the CLI
and the docks' file dialogs all ask :data:`FORMATS` rather than listing suffixes of their own.

The readers are imported when a file is read, so asking the registry is cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._common import NIFTI_SUFFIXES, TIFF_SUFFIXES, suffix_of
from .dicom import is_dicom_file, read_dicom
from .nifti import read_nifti, read_nifti_labels, write_nifti_labels
from .scan import LabelError

if TYPE_CHECKING:  # pragma: no cover
    from .scan import Scan

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")


@dataclass(frozen=True)
class Format:
    """One file format: its name, what users call it, the suffixes it owns (lower case, the
    first the one files are written with), and what the project can do with it."""

    name: str
    title: str
    suffixes: tuple[str, ...]
    reads_labels: bool = False
    writes_labels: bool = False
    volumes: bool = False  # a file may hold several volumes (choose one with ``volume=k``)

    def owns(self, path: Path) -> bool:
        """Whether the file's suffix is one of this format's."""
        return suffix_of(path) in self.suffixes

    def can_read(self, path: Path) -> bool:
        """Whether ``path`` is a file of this format (by its suffix; DICOM looks inside)."""
        return self.owns(path)

    def is_scan(self, path: Path) -> bool:
        """Whether one file of this format is a scan on its own (not a single 2D picture)."""
        return self.can_read(path)

    def read(self, path: Path, *, volume: int | None = None, allow_nan: bool = True) -> list[Scan]:
        raise NotImplementedError

    def read_labels(self, path: Path, like: Scan | None) -> np.ndarray:
        raise NotImplementedError

    def write_labels(self, labels: np.ndarray, path: Path, like: Scan) -> None:
        raise NotImplementedError

    def glob(self) -> str:
        """The suffixes as a file dialog's pattern: ``*.nii *.nii.gz``."""
        return " ".join(f"*{s}" for s in self.suffixes)


class _Nifti(Format):
    def read(self, path, *, volume=None, allow_nan=True):
        return [read_nifti(path, volume=volume, allow_nan=allow_nan)]

    def read_labels(self, path, like):
        return read_nifti_labels(path, like)

    def write_labels(self, labels, path, like):
        write_nifti_labels(labels, path, like)


class _Tiff(Format):
    def is_scan(self, path):
        # imported here, when needed: it loads tifffile
        from .stack import tiff_is_a_scan

        return tiff_is_a_scan(path)

    def read(self, path, *, volume=None, allow_nan=True):
        # imported here, when needed: it loads tifffile
        from .stack import read_tiff

        return [read_tiff(path, allow_nan=allow_nan)]

    def read_labels(self, path, like):
        # imported here, when needed: it loads tifffile
        from .stack import read_stack_labels

        return read_stack_labels(path)

    def write_labels(self, labels, path, like):
        # imported here, when needed: it loads tifffile
        from .stack import write_tiff_labels

        write_tiff_labels(labels, path, like.spacing)


class _Picture(Format):
    def is_scan(self, path):
        return False  # one 2D picture: napari's own reader shows it

    def read(self, path, *, volume=None, allow_nan=True):
        # imported here, when needed: it loads tifffile
        from .stack import read_image

        return [read_image(path, allow_nan=allow_nan)]

    def read_labels(self, path, like):
        # imported here, when needed: it loads tifffile
        from .stack import read_stack_labels

        return read_stack_labels(path)


class _Dicom(Format):
    def can_read(self, path):
        return is_dicom_file(path)

    def read(self, path, *, volume=None, allow_nan=True):
        return read_dicom(path, allow_nan=allow_nan)  # refuses a file that is not DICOM


class _Npy(Format):
    def read_labels(self, path, like):
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise LabelError(path, f"not a readable .npy array ({exc})") from exc


NIFTI = _Nifti("nifti", "NIfTI", NIFTI_SUFFIXES, True, True, volumes=True)
TIFF = _Tiff("tiff", "TIFF", TIFF_SUFFIXES, True, True)
PICTURE = _Picture("image", "PNG/JPEG/BMP", PICTURE_SUFFIXES, True)
DICOM = _Dicom("dicom", "DICOM", DICOM_SUFFIXES)
NPY = _Npy("npy", "NumPy", (".npy",), True)

# In the order a file is matched; DICOM files often have no suffix (``can_read`` looks inside).
FORMATS: tuple[Format, ...] = (NIFTI, TIFF, PICTURE, DICOM, NPY)
SCAN_FORMATS: tuple[Format, ...] = (NIFTI, DICOM, TIFF, PICTURE)


def format_of(path: str | os.PathLike) -> Format | None:
    """The format that owns ``path``'s suffix, else DICOM when the file is DICOM inside (any
    name), else None. Opens the file only in the last case."""
    p = Path(path)
    for f in FORMATS:
        if f.owns(p):
            return f
    if p.is_file() and DICOM.can_read(p):
        return DICOM
    return None


def named(name: str) -> Format:
    """The registered format called ``name`` (``nifti``, ``tiff``, ``image``, ``dicom``,
    ``npy``); KeyError for another name."""
    for f in FORMATS:
        if f.name == name:
            return f
    raise KeyError(name)


def mask_suffix(fmt: Format) -> str:
    """The suffix a mask file of ``fmt`` is written with: NIfTI's compressed ``.nii.gz``, else
    the format's first (``.tif``; ``.dcm`` for a DICOM-SEG)."""
    return ".nii.gz" if fmt is NIFTI else fmt.suffixes[0]


def suffixes(formats: tuple[Format, ...] = SCAN_FORMATS) -> tuple[str, ...]:
    return tuple(s for f in formats for s in f.suffixes)


def label_formats(*, write: bool = False) -> tuple[Format, ...]:
    return tuple(f for f in FORMATS if (f.writes_labels if write else f.reads_labels))


def titles(formats: tuple[Format, ...]) -> str:
    """``NIfTI (.nii, .nii.gz), TIFF (.tif, .tiff)``: what a message lists."""
    return ", ".join(f"{f.title} ({', '.join(f.suffixes)})" for f in formats)


def dialog_filter(formats: tuple[Format, ...] = SCAN_FORMATS, what: str = "Scans") -> str:
    """A file dialog's filter: ``Scans (*.nii *.nii.gz ...);;All files (*)``."""
    return f"{what} ({' '.join(f.glob() for f in formats)});;All files (*)"


def strip_suffix(name: str) -> str:
    """``case_01.nii.gz`` -> ``case_01``, for any suffix a registered format owns."""
    low = name.lower()
    for s in sorted(suffixes(FORMATS), key=len, reverse=True):
        if low.endswith(s):
            return name[: -len(s)]
    return name
