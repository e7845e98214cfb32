"""Timings of this machine kept between sessions: what a plan measured once (the step-cost fit,
bf16 against fp32) is taken by the next session's plan instead of timing again at the click.

One small JSON file per user (``timings.json`` in the user's cache folder, or in
``$MTSSL_CACHE_DIR``), written atomically. It is read only if it was written on the same machine
(the CPU, its usable cores, torch's version and :data:`VERSION` of what is timed); an entry older
than :data:`MAX_AGE_S` is timed again, and a file that cannot be read is ignored, never an error:
a plan that finds nothing times, as it did before. Only CPU timings are kept (a GPU times its
steps in a fraction of a second, with their peak memory, which is not kept).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import torch

from napari_mtssl._atomic import atomic_write_json

__all__ = ["VERSION", "MAX_AGE_S", "CACHE_ENV", "path", "get", "put", "machine"]

# What is timed: raise it when the timed network, its loss or its steps change, so the timings
# of the old code are not taken for the new.
VERSION = 1
MAX_AGE_S = 14 * 24 * 3600.0  # a machine's software and load change: time again after two weeks
CACHE_ENV = "MTSSL_CACHE_DIR"

_LOCK = threading.Lock()


def path() -> Path:
    """Where the timings are kept: ``$MTSSL_CACHE_DIR``, else the user's cache folder."""
    folder = os.environ.get(CACHE_ENV, "").strip()
    if folder:
        return Path(folder) / "timings.json"
    try:  # platformdirs comes with napari, not with the headless install
        import platformdirs
    except ImportError:  # the headless install: the XDG default
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return base / "napari-mtssl" / "timings.json"
    return Path(platformdirs.user_cache_dir("napari-mtssl", appauthor=False)) / "timings.json"


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the timings are valid for: this CPU, the cores this process may use, torch's
    version and the version of what is timed."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_name(),
        "cpus": int(cpus or 1),
        "torch": torch.__version__,
        "version": VERSION,
    }


def _read() -> dict[str, Any]:
    """The kept entries, or none where the file is missing, unreadable or from another machine."""
    try:
        data = json.loads(path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("machine") != machine():
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def get(key: str, now: float | None = None) -> dict[str, Any] | None:
    """The values kept under ``key``, or None (none kept, kept too long ago, or not readable)."""
    entry = _read().get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("values"), dict):
        return None
    at = entry.get("at")
    now = time.time() if now is None else now
    if not isinstance(at, int | float) or not 0 <= now - at <= MAX_AGE_S:
        return None
    return entry["values"]


def put(key: str, values: dict[str, Any]) -> None:
    """Keep ``values`` (JSON numbers and strings) under ``key``. A folder that cannot be
    written leaves the timings unkept (the next session times again), never an error."""
    with _LOCK:
        entries = _read()
        entries[key] = {"at": time.time(), "values": values}
        try:
            atomic_write_json(path(), {"machine": machine(), "entries": entries})
        except OSError:
            pass
