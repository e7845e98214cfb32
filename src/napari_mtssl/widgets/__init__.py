"""The napari docks of napari-mtssl: the only package that imports Qt, magicgui or napari.

Kept light: napari imports each dock from its own module (``napari_mtssl.widgets.study:...``
in ``napari.yaml``), so nothing is imported here until a function below is called.
"""

from __future__ import annotations

from typing import Any

PLUGIN = "napari-mtssl"
DOCKS = ("Study", "Tasks and training", "Compare models", "Correct and retrain")
ALL_STEPS = "All steps (tabs)"


def add_docks(viewer: Any) -> dict[str, Any]:
    """Add the plugin to ``viewer`` as one dock with the four steps as tabs (it fits a laptop
    screen); returns step name -> widget."""
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, ALL_STEPS)
    return dict(widget.widgets)


def launch_demo(folder: str | None = None, run: bool = True) -> Any:
    """Open napari with the sample study in a new workspace and all four docks.

    ``folder``: where the workspace goes (default: a new temporary folder). With ``run=False``
    the viewer is returned without entering the event loop (tests, screenshots).
    """
    import napari  # imported here, when needed: this package is kept light (its docstring)

    viewer = napari.Viewer(title="napari-mtssl demo")
    widgets = add_docks(viewer)
    widgets["Study"].load_sample(folder)
    if run:
        napari.run()
    return viewer
