"""The one place where napari layers become plain data, and plain data becomes layers.

Core code never sees a layer: the widgets build a frozen :class:`ViewerState` (or a single
:class:`LayerScan`) here and hand ``Scan`` objects and numpy arrays to the engine. Going the other
way, :func:`show_scan` / :func:`show_labels` put engine results into the viewer with the scan's
physical scale, so every layer of one scan lines up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from napari.layers import Image, Labels

from napari_mtssl import api
from napari_mtssl.api import NAMES_KEY, WORKSPACE_KEY, LabelError, Scan, ScanReadError
from napari_mtssl.colours import labels_colour_dict
from napari_mtssl.widgets._slider import fit_slider_to_shown

SCAN_META_KEY = "mtssl_scan"  # metadata the io readers put on image layers (Scan.layer_kwargs)
SCAN_ID_KEY = "mtssl_scan_id"  # scan id of an image layer, or of the scan a label layer is for
ROLE_KEY = "mtssl_role"  # what a label layer is: "labels", "edit", "model:<name>", ...


@dataclass(frozen=True)
class LayerScan:
    """An image layer as plain data: ``array`` ``(z, y, x)``, spacing ``(z, y, x)`` mm."""

    layer_name: str
    array: np.ndarray
    spacing: tuple[float, float, float]
    scan_id: str | None = None
    affine: np.ndarray | None = None
    source: str | None = None
    modality: str = "unknown"
    meta: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_layer(cls, layer: Any) -> LayerScan:
        """Read an image layer; raise ScanReadError (naming the layer) for RGB or >3D data."""
        if getattr(layer, "rgb", False):
            raise ScanReadError(layer.name, "an RGB image is not a scan; convert it to grey first")
        data = np.asarray(layer.data)
        if data.ndim not in (2, 3):
            raise ScanReadError(layer.name, f"a scan is 2D or 3D, this layer is {data.ndim}D")
        scale = tuple(float(s) for s in layer.scale)
        spacing = (1.0, *scale) if data.ndim == 2 else scale
        meta = dict(layer.metadata.get(SCAN_META_KEY) or {})
        affine = meta.pop("affine", None)
        meta.pop("spacing", None)
        return cls(
            layer_name=str(layer.name),
            array=data,
            spacing=spacing,  # type: ignore[arg-type]
            scan_id=layer.metadata.get(SCAN_ID_KEY),
            affine=None if affine is None else np.asarray(affine, dtype=float),
            source=meta.pop("source", None),
            modality=str(meta.pop("modality", "unknown")),
            meta=meta,
        )

    def to_scan(self) -> Scan:
        """The layer as a ``Scan`` (float32); without a stored affine, a diagonal one from scale."""
        affine = self.affine if self.affine is not None else np.diag([*self.spacing, 1.0])
        return Scan(
            array=np.asarray(self.array, dtype=np.float32),
            spacing=self.spacing,
            affine=affine,
            name=self.layer_name,
            source=self.source,
            modality=self.modality,
            meta=dict(self.meta),
        )


@dataclass(frozen=True)
class LayerLabels:
    """A labels layer as plain data: ``data`` ``(z, y, x)`` integer mask."""

    layer_name: str
    data: np.ndarray
    scan_id: str | None = None
    role: str | None = None

    @classmethod
    def from_layer(cls, layer: Any) -> LayerLabels:
        data = np.asarray(layer.data)
        if data.ndim == 2:
            data = data[None]
        return cls(
            str(layer.name), data, layer.metadata.get(SCAN_ID_KEY), layer.metadata.get(ROLE_KEY)
        )

    def checked_for(self, shape: tuple[int, ...]) -> np.ndarray:
        """The mask if it has the scan's ``shape`` (z, y, x), else LabelError naming the layer."""
        if tuple(self.data.shape) != tuple(shape):
            raise LabelError(
                self.layer_name,
                f"label shape {tuple(self.data.shape)} does not match the image shape "
                f"{tuple(shape)}",
            )
        return self.data


@dataclass(frozen=True)
class ViewerState:
    """What the docks need from the viewer, frozen: image and label layers, current slice."""

    images: tuple[LayerScan, ...]
    labels: tuple[LayerLabels, ...]
    current_z: int

    @classmethod
    def from_viewer(cls, viewer: Any) -> ViewerState:
        images = tuple(
            LayerScan.from_layer(ly)
            for ly in viewer.layers
            if isinstance(ly, Image) and not ly.rgb and np.ndim(ly.data) in (2, 3)
        )
        labels = tuple(LayerLabels.from_layer(ly) for ly in viewer.layers if isinstance(ly, Labels))
        return cls(images, labels, current_slice(viewer))

    def image(self, name: str) -> LayerScan:
        for img in self.images:
            if img.layer_name == name:
                return img
        raise KeyError(f"no image layer named {name!r}")

    def label_layer(self, name: str) -> LayerLabels:
        for lab in self.labels:
            if lab.layer_name == name:
                return lab
        raise KeyError(f"no labels layer named {name!r}")


def current_slice(viewer: Any, layer: Any | None = None) -> int:
    """Index of ``layer``'s slice on screen (axis 0, the slice axis of every scan).

    Through world coordinates, so it stays right when scans with other spacings share the
    viewer (then a dims step is not a slice of every layer).
    """
    if viewer.dims.ndim < 3:
        return 0
    if layer is None:
        return int(viewer.dims.current_step[0])
    world = float(viewer.dims.point[0])
    z = round((world - float(layer.translate[0])) / float(layer.scale[0]))
    return int(np.clip(z, 0, np.shape(layer.data)[0] - 1))


def go_to_slice(viewer: Any, z: int, layer: Any | None = None) -> None:
    """Show slice ``z`` of ``layer`` (or dims step ``z`` without a layer)."""
    if layer is None:
        viewer.dims.set_current_step(0, int(z))
    else:
        viewer.dims.set_point(0, float(layer.translate[0]) + int(z) * float(layer.scale[0]))


def find_layer(viewer: Any, name: str) -> Any | None:
    return viewer.layers[name] if name in viewer.layers else None


def scan_layer_name(scan_id: str) -> str:
    return scan_id


def model_layer_name(scan_id: str, model: str) -> str:
    """``"<scan>_teacher-sdm"``: the layer names the comparison dock uses (also the default
    file name napari offers when a layer is saved, so no spaces and no colons)."""
    return f"{scan_id}_{model.replace(':', '-')}"


def show_scan(viewer: Any, scan: Scan, scan_id: str, ws: Any = None) -> Any:
    """Add (or refresh) the image layer of scan ``scan_id`` of workspace ``ws``; returns the
    layer."""
    kwargs = scan.layer_kwargs()
    kwargs["name"] = scan_layer_name(scan_id)
    kwargs["metadata"][SCAN_ID_KEY] = scan_id
    if ws is not None:  # cleared with the workspace's other layers
        kwargs["metadata"][WORKSPACE_KEY] = str(ws.root)
    layer = find_layer(viewer, kwargs["name"])
    if layer is not None:
        layer.data = scan.array
        layer.scale = kwargs["scale"]
        layer.metadata.update(kwargs["metadata"])
        return layer
    return viewer.add_image(scan.array, colormap="gray", **kwargs)


def show_labels(
    viewer: Any,
    data: np.ndarray,
    name: str,
    scan_id: str,
    scale: tuple[float, ...],
    role: str,
    visible: bool = True,
    ws: Any = None,
) -> Any:
    """Add or update a labels layer over a scan of workspace ``ws`` (same scale, so it lines
    up). It carries the scan's geometry (the metadata of the scan's image layer), so napari's
    File > Save writes it in the scan's own orientation and affine, voxel for voxel on the
    source file, and the workspace's class names."""
    meta: dict[str, Any] = {SCAN_ID_KEY: scan_id, ROLE_KEY: role}
    geometry = scan_geometry(viewer, scan_id)
    if geometry is not None:
        meta[SCAN_META_KEY] = geometry
    names = dict(ws.label_names) if ws is not None else {}
    if ws is not None:  # segment names for a DICOM-SEG saved from this layer
        meta[NAMES_KEY] = {str(k): v for k, v in names.items()}
        meta[WORKSPACE_KEY] = str(ws.root)  # cleared with the workspace's other layers
    features = api.class_features(names)  # the class name under the pointer, in the status bar
    layer = find_layer(viewer, name)
    if layer is not None:
        layer.data = data
        layer.scale = scale
        layer.metadata.update(meta)
        if features is not None:
            layer.features = features
        return layer

    # class k has the same colour in every layer, the comparison grid, the report and a DICOM-SEG
    return viewer.add_labels(
        data,
        name=name,
        scale=scale,
        metadata=meta,
        visible=visible,
        opacity=0.5,
        colormap=labels_colour_dict(),
        features=features,
    )


def scan_geometry(viewer: Any, scan_id: str) -> dict | None:
    """The geometry metadata of a workspace scan's image layer (None if it is not shown)."""
    layer = find_layer(viewer, scan_layer_name(scan_id))
    if layer is None:
        return None
    geometry = layer.metadata.get(SCAN_META_KEY)
    return dict(geometry) if geometry else None


def adopt_geometry(viewer: Any, layer: Any) -> bool:
    """Give a new labels layer (painted by a person, opened from a file) the geometry of the
    scan it was made for: the one image layer with scan geometry and the same shape. Returns
    whether it did; with several candidates of different geometry it leaves the layer alone
    (saving it then says which scan is meant is unknown rather than guessing)."""
    if getattr(layer, "_type_string", "") != "labels" or layer.metadata.get(SCAN_META_KEY):
        return False
    shape = tuple(np.shape(layer.data))
    found: list[Any] = []
    for other in viewer.layers:
        if other is layer or getattr(other, "_type_string", "") != "image":
            continue
        geometry = other.metadata.get(SCAN_META_KEY)
        if geometry and tuple(np.shape(other.data)) == shape:
            found.append(other)
    geometries = {repr(o.metadata[SCAN_META_KEY].get("affine")) for o in found}
    if len(geometries) != 1:
        return False
    src = found[0]
    layer.metadata[SCAN_META_KEY] = dict(src.metadata[SCAN_META_KEY])
    if src.metadata.get(SCAN_ID_KEY) and len(found) == 1:
        layer.metadata.setdefault(SCAN_ID_KEY, src.metadata[SCAN_ID_KEY])
    layer.scale = tuple(src.scale)
    return True


def scan_layer_scale(viewer: Any, scan_id: str, fallback: tuple[float, ...]) -> tuple[float, ...]:
    layer = find_layer(viewer, scan_layer_name(scan_id))
    return tuple(layer.scale) if layer is not None else tuple(fallback)


def show_only_scan(viewer: Any, scan_id: str, keep: tuple[str, ...] = ()) -> None:
    """Hide every layer that belongs to another workspace scan (images, labels, predictions,
    edits), so what is painted and compared lies over the scan on screen, and fit the slice
    slider to it. ``keep``: names of this scan's layers to show (its image always is)."""
    for layer in viewer.layers:
        sid = layer.metadata.get(SCAN_ID_KEY)
        if sid is None:
            continue
        if sid != scan_id:
            layer.visible = False
        elif layer.name == scan_layer_name(scan_id) or layer.name in keep:
            layer.visible = True
    fit_slider_to_shown(viewer)  # the slice slider spans this scan, not the hidden ones


def refill_scan_choice(combo: Any, ws: Any) -> None:
    """Fill a scan combo box with the workspace's scans (none without one), keeping the scan
    chosen before when it is still there."""
    current = combo.currentText()
    combo.clear()
    if ws is not None:
        combo.addItems(list(ws.scan_ids()))
    if current:
        combo.setCurrentText(current)
