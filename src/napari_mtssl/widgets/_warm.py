"""One-time costs of napari's first layer, paid off the GUI thread.

napari gives every layer's transform physical units from pint's application registry. That
registry is lazy: the first layer of the session parses pint's unit definitions on the GUI thread,
about 0.6 s on a laptop core (measured: 650 ms of a 1.2 s ``add_image`` of an ACDC scan). Here a
registry built the same way is made in a worker thread when the docks open, then installed on the
GUI thread, only while the application registry is still the untouched lazy one (no unit of it
exists yet, so nothing can mix units of two registries). Any failure leaves pint as it was: the
first layer then pays the cost itself, as without this module.

The same thread imports the modules napari's first image layer imports on the GUI thread
(``scipy.ndimage`` for its thumbnail: another 0.67 s measured), and computes the dash patterns
vispy draws a labels layer's polygon tool with (pure numpy, cached by vispy once computed:
0.15 s of the first labels layer).

Once that is done, every object then alive is moved out of the garbage collector's sight
(:func:`freeze_survivors`). napari runs a full collection each time a layer is removed, and
Python runs one by itself every so often; each walks every object of the process: 140-150 ms of
an idle core for the 270,000-285,000 objects of a viewer with the docks' modules, 265-300 ms for
400,000 beside two busy processes, against about 1 ms once they are frozen
(``benchmarks/speed/run.py layers``). Objects that live as long as the session (modules,
napari's and the docks' widgets) need no walking; what is made afterwards (a study's records,
a layer, a dialog) is collected as before. Only this once: a later freeze could keep for the
session a scan's arrays held by a cycle that had become garbage just before it. A layer the
viewer held already (a scan opened before the docks) is frozen with the rest; when it is
removed, everything is thawed and collected (:func:`thaw_for`), so its data is freed, and the
collector walks everything again from then on, as without the freeze.
"""

from __future__ import annotations

import gc
import importlib
import weakref
from collections.abc import Iterable
from typing import Any

_started = False
_frozen_layers: set[int] = set()  # the ids of the layers frozen with the rest, until removed


def _lazy_registry() -> Any | None:
    """The application registry while it has not been built yet, else None."""
    # imported here, in the warming thread: pint's import is part of what it pays off the GUI
    # thread (the first layer imports it otherwise)
    import pint
    from pint.registry import LazyRegistry

    current = pint.get_application_registry().get()
    return current if isinstance(current, LazyRegistry) else None


FIRST_LAYER_IMPORTS = ("scipy.ndimage",)


def build_unit_registry() -> Any | None:
    """A built registry with the lazy one's parameters (worker thread); None if not needed."""
    import pint  # imported here, in the warming thread, as in _lazy_registry

    lazy = _lazy_registry()
    if lazy is None:
        return None
    args, kwargs = lazy.__dict__["params"]
    registry = pint.UnitRegistry(*args, **{**kwargs, "on_redefinition": "raise"})
    _ = registry.pixel  # the unit every layer asks for
    return registry


def warm_dash_patterns() -> None:
    """Fill vispy's cache of line dash patterns (numpy only, no GL): every labels layer's
    polygon overlay builds them, the first one on the GUI thread otherwise."""
    try:
        # imported here, in the warming thread; a vispy without this module is let be
        from vispy.visuals.line.dash_atlas import DashAtlas
    except ImportError:  # another vispy: the first labels layer computes them itself
        return
    DashAtlas()


def install_unit_registry(registry: Any | None) -> bool:
    """Make ``registry`` the application registry (GUI thread) if the lazy one is untouched."""
    import pint  # imported here: the warming thread imported it already

    if registry is None or _lazy_registry() is None:
        return False
    pint.set_application_registry(registry)
    return True


def freeze_survivors(layers: Iterable[Any] = ()) -> None:
    """Collect the young generations, then move every object still alive to the collector's
    permanent generation (GUI thread, at a settled moment). A cycle of garbage already in the
    old generation is kept with them; what dies later is collected as usual. ``layers``: the
    viewer's layers now, frozen too; removing one calls for :func:`thaw_for`."""
    gc.collect(1)
    gc.freeze()
    _frozen_layers.update(id(layer) for layer in layers)


def thaw_for(layer: Any) -> bool:
    """``layer`` has left the viewer. If it was frozen, its cycles (the layer, its events, its
    data) sit where no collection reaches: thaw everything and collect now (one full
    collection, what napari pays at every removal without the freeze). Returns whether it
    thawed. A frozen layer stays alive until it is removed, so its id names no other object."""
    if id(layer) not in _frozen_layers:
        return False
    _frozen_layers.clear()
    gc.unfreeze()
    gc.collect()
    return True


def warm_in_background(viewer: Any = None) -> None:
    """Once per process: build the unit registry in a thread and install it when ready, then
    freeze what lives, ``viewer``'s layers with it."""
    global _started
    if _started:
        return
    _started = True

    def work() -> Any | None:
        for name in FIRST_LAYER_IMPORTS:
            importlib.import_module(name)
        warm_dash_patterns()
        return build_unit_registry()

    def ignore(exc: BaseException) -> None:
        """An optimisation only: what failed is built lazily when it is first needed."""

    try:
        # imported here, when needed: it loads Qt
        from napari_mtssl.widgets._jobs import run_in_thread

        ref = weakref.ref(viewer) if viewer is not None else lambda: None

        def installed(registry: Any | None) -> None:
            install_unit_registry(registry)
            shown = ref()
            freeze_survivors(list(getattr(shown, "layers", ())))

        run_in_thread(work, on_result=installed, action="warming", on_error=ignore)
    except Exception:  # noqa: BLE001 - an optimisation only: pint stays lazy
        return
