"""Results users take elsewhere: masks as DICOM-SEG (for a PACS or a hospital viewer), the
student as ONNX or as a bioimage.io model package (to run where napari-mtssl is not installed),
and those packages imported back into a workspace.

The optional dependencies (``pip install napari-mtssl[export]``: highdicom, onnx, onnxruntime,
bioimageio.spec) are imported only here, when an export is asked for; a missing one is an
:class:`ExportError` that says what to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path

__all__ = ["ExportError", "require", "check_output"]


class ExportError(ValueError):
    """An export or import that cannot be done; the message names the file or the problem."""


def require(module: str, purpose: str):
    """Import an optional dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(
            f"{purpose} needs the package {module.split('.')[0]!r}: "
            "pip install 'napari-mtssl[export]'"
        ) from None


def check_output(path: str | Path, *, force: bool = False) -> Path:
    """An output path that never replaces an existing file unless ``force``."""
    p = Path(path)
    if p.is_dir():
        raise ExportError(f"{p}: is a folder; give a file name")
    if p.exists() and not force:
        raise ExportError(f"{p}: exists; add --force to replace it")
    if not p.parent.is_dir():
        raise ExportError(f"{p}: its folder {p.parent} does not exist")
    return p
