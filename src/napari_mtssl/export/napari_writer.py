"""napari's "save labels as DICOM-SEG" writer (npe2): a labels layer of a scan read from DICOM,
written as a DICOM-SEG referencing that series. It lives with the exporter it hands the layer
to; the reader and the other writers, which need no exporter, are in :mod:`napari_mtssl.io.napari_io`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_mtssl.export import ExportError
from napari_mtssl.export.dicomseg import workspace_codes, write_dicom_seg
from napari_mtssl.io.napari_io import NAMES_KEY, WORKSPACE_KEY, SaveRefusedError, scan_of_layer
from napari_mtssl.io.scan import LabelError


def write_labels_dicom_seg(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: labels of a scan read from DICOM as a DICOM-SEG referencing
    that series (the layer's own scan, or the one DICOM scan of its shape opened through the
    plugin; a mask of any other scan is refused, with NIfTI offered instead). The segments get
    the codes of the layer's workspace (its ``segment_codes.json``), if it belongs to one."""
    target = path if Path(path).suffix.lower() == ".dcm" else f"{path}.dcm"
    meta = scan_of_layer(data, attributes, dicom=True) or {}
    metadata = attributes.get("metadata") or {}
    names = {int(k): str(v) for k, v in (metadata.get(NAMES_KEY) or {}).items()}
    arr = np.asarray(data)
    for c in np.unique(arr):
        names.setdefault(int(c), "background" if c == 0 else f"class {int(c)}")
    role = str(metadata.get("mtssl_role") or "")
    algorithm = {"model": role.split(":", 1)[1]} if role.startswith("model:") else None
    try:
        root = metadata.get(WORKSPACE_KEY)
        codes = workspace_codes(root, names) if root else None
        write_dicom_seg(arr, meta, target, label_names=names, algorithm=algorithm, codes=codes)
    except (ExportError, LabelError) as exc:
        raise SaveRefusedError(str(exc)) from exc
    return [target]
