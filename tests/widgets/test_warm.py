"""The first layer's unit registry, built off the GUI thread and installed only while untouched;
vispy's dash patterns computed off it too; once warm, what lives frozen out of the collector's
walk.

Run in a fresh interpreter: in the test process, earlier tests' layers have built pint's
registry already."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("napari")

CODE = r"""
import threading
import numpy as np
import pint
from napari.layers import Image
from napari_mtssl.widgets import _warm

assert _warm._lazy_registry() is not None, "pint's application registry starts lazy"
box = {}
t = threading.Thread(target=lambda: box.update(reg=_warm.build_unit_registry()))
t.start(); t.join()
assert _warm.install_unit_registry(box["reg"])
assert pint.get_application_registry().get() is box["reg"]
layer = Image(np.zeros((2, 8, 8), np.float32), scale=(3.0, 1.5, 1.5))
assert layer.units[0] == box["reg"].pixel
assert _warm.build_unit_registry() is None, "nothing to build once installed"
assert not _warm.install_unit_registry(box["reg"]), "never replaced once in use"
from vispy.visuals.line import dash_atlas
assert dash_atlas._make_pattern.cache_info().currsize == 0
t = threading.Thread(target=_warm.warm_dash_patterns)
t.start(); t.join()
assert dash_atlas._make_pattern.cache_info().currsize > 0, "the patterns a labels layer needs"
print("ok")
"""


def test_registry_built_in_a_thread_serves_napari_layers():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


FREEZE = r"""
import gc
import time
import weakref
from qtpy.QtWidgets import QApplication
from napari_mtssl.widgets import _warm

app = QApplication([])

class Node:
    pass

def tracked(obj):
    return any(o is obj for o in gc.get_objects())

old = Node()
old.me = old  # lives as long as the session
assert tracked(old) and gc.get_freeze_count() == 0
_warm.warm_in_background()  # as the docks do when they open
end = time.monotonic() + 120
while tracked(old) and time.monotonic() < end:
    app.processEvents()
    time.sleep(0.05)
assert not tracked(old), "once warm, what lived is out of the collector's walk"
new = Node()
new.me = new  # a cycle made afterwards, then dropped
ref = weakref.ref(new)
del new
gc.collect()
assert ref() is None, "garbage made after the freeze is still collected"
print("ok")
"""


def test_once_warm_what_lived_leaves_the_collectors_walk():
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run(
        [sys.executable, "-c", FREEZE], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.gui
def test_a_scan_opened_before_the_docks_is_freed_when_removed(make_napari_viewer):
    """Frozen with the rest when the docks warmed up, the layer's cycles would sit where no
    collection reaches: removing it thaws, so its data is freed."""
    import gc
    import weakref

    import numpy as np

    from napari_mtssl.widgets import _warm
    from napari_mtssl.widgets._session import session_for

    viewer = make_napari_viewer()
    data = np.zeros((4, 64, 64), np.float32)
    freed = weakref.ref(data)
    viewer.add_image(data, name="opened first")
    del data
    session_for(viewer)  # the docks' session: it watches the removals
    _warm.freeze_survivors(viewer.layers)  # what the warm-up does once it is done
    assert gc.get_freeze_count() > 0
    viewer.layers.remove("opened first")
    assert gc.get_freeze_count() == 0, "thawed at a frozen layer's removal"
    gc.collect()
    assert freed() is None, "the removed layer's data is freed"
