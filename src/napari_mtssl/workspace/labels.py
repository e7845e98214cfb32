"""Per-scan label store with per-slice status, provenance and undo history.

Files for a scan with id ``<id>`` (all under ``labels/``)::

    <id>.npz                 mask (z, y, x) uint8/uint16, status (z,) uint8 code, rev () int64
    <id>.json                {"rev": ..., "slices": {"<z>": [entry, ...]}}: provenance, newest last
    history/<id>/<rev>.npz   slices (k,), mask (k, y, x), status (k,): what revision ``rev``
                             overwrote, so it can be undone

Crash safety without a transaction: every file is replaced atomically and each change is
written in the order history, provenance, mask. The mask file's ``rev`` is the commit point:
provenance entries tagged with a later revision belong to a write that never finished and are
ignored on read and dropped on the next write, so a killed process always leaves one of the
saved states.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from napari_mtssl._atomic import atomic_save_npz, atomic_write_json
from napari_mtssl.io.scan import LabelError, validate_labels

from ._errors import WorkspaceError
from .runs import utc_now

SLICE_STATUSES = ("unlabelled", "annotated", "corrected")
_CODE = {name: code for code, name in enumerate(SLICE_STATUSES)}


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class LabelStore:
    """The ``labels/`` folder of a workspace. Callers hold the workspace lock for writes."""

    def __init__(self, folder: Path):
        self.folder = folder
        # Per-session cache of the last read mask file, keyed by its stat (replace => new inode).
        self._cache: dict[str, tuple[tuple[int, int, int], np.ndarray, np.ndarray, int]] = {}

    # -- paths -------------------------------------------------------------------------------
    def mask_path(self, scan_id: str) -> Path:
        return self.folder / f"{scan_id}.npz"

    def provenance_path(self, scan_id: str) -> Path:
        return self.folder / f"{scan_id}.json"

    def history_dir(self, scan_id: str) -> Path:
        return self.folder / "history" / scan_id

    def has_files(self, scan_id: str) -> bool:
        return (
            self.mask_path(scan_id).exists()
            or self.provenance_path(scan_id).exists()
            or self.history_dir(scan_id).exists()
        )

    # -- reading -----------------------------------------------------------------------------
    def _read(
        self, scan_id: str, shape: tuple[int, int, int]
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(mask, status codes, rev); cached arrays, callers must copy before changing them."""
        path = self.mask_path(scan_id)
        key = _stat_key(path)
        if key is None:
            self._cache.pop(scan_id, None)
            return np.zeros(shape, np.uint8), np.zeros(shape[0], np.uint8), 0
        hit = self._cache.get(scan_id)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2], hit[3]
        try:
            with np.load(path, allow_pickle=False) as npz:
                mask, status, rev = npz["mask"], npz["status"], int(npz["rev"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise WorkspaceError(path, f"cannot read the label file ({exc})") from None
        if tuple(mask.shape) != tuple(shape) or status.shape != (shape[0],):
            raise WorkspaceError(
                path,
                f"label volume has shape {tuple(mask.shape)} but scan {scan_id!r} has {tuple(shape)}",
            )
        if mask.dtype not in (np.uint8, np.uint16) or status.max(initial=0) >= len(SLICE_STATUSES):
            raise WorkspaceError(path, "label file holds an unexpected mask type or status code")
        mask.flags.writeable = False
        status.flags.writeable = False
        self._cache[scan_id] = (key, mask, status, rev)
        return mask, status, rev

    def labels(self, scan_id: str, shape: tuple[int, int, int]) -> np.ndarray:
        return self._read(scan_id, shape)[0].copy()

    def signature(self, scan_id: str) -> tuple[int, int, int] | None:
        """The mask file's identity (inode, time, size), which every change replaces; None
        while nothing is stored."""
        return _stat_key(self.mask_path(scan_id))

    def status_codes(self, scan_id: str, shape: tuple[int, int, int]) -> np.ndarray:
        """Status codes only; npz members load lazily, so the mask is not decompressed."""
        path = self.mask_path(scan_id)
        hit = self._cache.get(scan_id)
        if hit is not None and hit[0] == _stat_key(path):
            return hit[2].copy()
        if not path.exists():
            return np.zeros(shape[0], np.uint8)
        try:
            with np.load(path, allow_pickle=False) as npz:
                status = npz["status"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise WorkspaceError(path, f"cannot read the label file ({exc})") from None
        if status.shape != (shape[0],):
            raise WorkspaceError(
                path, f"status has {status.shape} entries, scan has {shape[0]} slices"
            )
        return status

    def slice_status(self, scan_id: str, shape: tuple[int, int, int]) -> list[str]:
        return [SLICE_STATUSES[c] for c in self.status_codes(scan_id, shape)]

    def _read_provenance(self, scan_id: str) -> dict[str, list[dict[str, Any]]]:
        path = self.provenance_path(scan_id)
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError) as exc:
            raise WorkspaceError(path, f"provenance file is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("slices"), dict):
            raise WorkspaceError(path, "not a provenance file")
        return data["slices"]

    def provenance(self, scan_id: str, shape: tuple[int, int, int], z: int) -> list[dict[str, Any]]:
        z = self._check_slices(scan_id, [z], shape[0])[0]
        rev = self._read(scan_id, shape)[2]
        entries = self._read_provenance(scan_id).get(str(z), [])
        return [
            {k: v for k, v in e.items() if k != "rev"} for e in entries if e.get("rev", 0) <= rev
        ]

    def corrections(self, scan_id: str, shape: tuple[int, int, int], rnd: int) -> list[dict]:
        """The newest provenance entry of each slice corrected in round ``rnd`` (undone ones
        excluded), with its slice index as ``z``."""
        if not self.has_files(scan_id):
            return []
        status = self.status_codes(scan_id, shape)
        rev = self._read(scan_id, shape)[2]
        out = []
        for key, entries in self._read_provenance(scan_id).items():
            live = [e for e in entries if e.get("rev", 0) <= rev]
            if not live or not key.isdigit() or int(key) >= len(status):
                continue
            last = live[-1]
            if last.get("status") == "corrected" and last.get("round") == rnd:
                out.append({**{k: v for k, v in last.items() if k != "rev"}, "z": int(key)})
        return out

    # -- writing -----------------------------------------------------------------------------
    @staticmethod
    def _check_slices(scan_id: str, slices: Iterable[int], n: int) -> list[int]:
        out = []
        for s in slices:
            if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
                raise WorkspaceError(f"scan {scan_id}", f"slice index {s!r} is not an integer")
            if not -n <= int(s) < n:
                raise WorkspaceError(
                    f"scan {scan_id}", f"slice {int(s)} is out of range (the scan has {n} slices)"
                )
            out.append(int(s) % n)
        return sorted(set(out))

    def _commit(
        self,
        scan_id: str,
        shape: tuple[int, int, int],
        slices: list[int],
        new_mask: np.ndarray,
        new_status: int,
        entry: dict[str, Any],
    ) -> None:
        mask, status, rev = self._read(scan_id, shape)
        new_rev = rev + 1
        # 1. what this revision overwrites, for undo
        atomic_save_npz(
            self.history_dir(scan_id) / f"{new_rev}.npz",
            slices=np.asarray(slices, np.int64),
            mask=mask[slices],
            status=status[slices],
        )
        # 2. provenance, tagged with the revision; leftovers of unfinished writes dropped
        prov = self._prune(self._read_provenance(scan_id), rev)
        stamp = {**entry, "time": utc_now(), "rev": new_rev}
        details = stamp.pop("details", None) or {}
        for z in slices:
            prov.setdefault(str(z), []).append({**stamp, **details.get(int(z), {})})
        atomic_write_json(self.provenance_path(scan_id), {"rev": new_rev, "slices": prov})
        # 3. the mask file: its rev commits the change
        dtype = np.uint16 if max(mask.dtype.itemsize, new_mask.dtype.itemsize) > 1 else np.uint8
        out_mask = mask.astype(dtype, copy=True)
        out_mask[slices] = new_mask[slices]
        out_status = status.copy()
        out_status[slices] = new_status
        self._save(scan_id, out_mask, out_status, new_rev)

    def _save(self, scan_id: str, mask: np.ndarray, status: np.ndarray, rev: int) -> None:
        atomic_save_npz(
            self.mask_path(scan_id),
            mask=mask,
            status=status.astype(np.uint8),
            rev=np.asarray(rev, np.int64),
        )

    @staticmethod
    def _prune(prov: dict[str, list[dict[str, Any]]], rev: int) -> dict[str, list[dict[str, Any]]]:
        out = {}
        for z, entries in prov.items():
            kept = [e for e in entries if e.get("rev", 0) <= rev]
            if kept:
                out[z] = kept
        return out

    def set_labels(
        self,
        scan_id: str,
        shape: tuple[int, int, int],
        labels: np.ndarray,
        slices: Iterable[int] | None,
        *,
        status: str,
        by: str,
        model: str | None,
        round: int | None,
        num_classes: int,
        details: dict[int, dict[str, Any]] | None = None,
    ) -> list[int]:
        if status not in ("annotated", "corrected"):
            raise WorkspaceError(
                f"scan {scan_id}",
                f"status must be 'annotated' or 'corrected', got {status!r} "
                "(use clear_slices to mark slices unlabelled)",
            )
        mask = validate_labels(labels, shape, f"labels for scan {scan_id!r}")
        top = int(mask.max(initial=0))
        if top >= num_classes:
            raise LabelError(
                f"labels for scan {scan_id!r}",
                f"class {top} is not a known label (label names define {num_classes} classes); "
                "set the label names first",
            )
        if slices is None:
            picked = [int(z) for z in np.flatnonzero(mask.reshape(shape[0], -1).any(axis=1))]
        else:
            picked = self._check_slices(scan_id, slices, shape[0])
        if not picked:
            return []
        entry: dict[str, Any] = {"status": status, "by": by, "model": model, "round": round}
        if details:
            entry["details"] = {int(z): dict(v) for z, v in details.items()}
        self._commit(scan_id, shape, picked, mask, _CODE[status], entry)
        return picked

    def clear_slices(
        self,
        scan_id: str,
        shape: tuple[int, int, int],
        slices: Iterable[int],
        *,
        by: str,
        round: int | None,
    ) -> list[int]:
        picked = self._check_slices(scan_id, slices, shape[0])
        if not picked:
            return []
        entry = {"status": "unlabelled", "by": by, "model": None, "round": round}
        self._commit(scan_id, shape, picked, np.zeros(shape, np.uint8), 0, entry)
        return picked

    def undo_last(self, scan_id: str, shape: tuple[int, int, int]) -> list[int]:
        """Restore the slices the last change overwrote; [] when there is nothing to undo."""
        mask, status, rev = self._read(scan_id, shape)
        hist = self.history_dir(scan_id) / f"{rev}.npz"
        if rev == 0 or not hist.exists():
            return []
        try:
            with np.load(hist, allow_pickle=False) as npz:
                slices, old_mask, old_status = npz["slices"], npz["mask"], npz["status"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise WorkspaceError(hist, f"cannot read the undo history ({exc})") from None
        picked = [int(z) for z in slices]
        out_mask = mask.astype(np.promote_types(mask.dtype, old_mask.dtype), copy=True)
        out_mask[picked] = old_mask
        out_status = status.copy()
        out_status[picked] = old_status
        # Mask first (commit point): entries of the undone rev are then ignored until pruned.
        self._save(scan_id, out_mask, out_status, rev - 1)
        prov = self._prune(self._read_provenance(scan_id), rev - 1)
        atomic_write_json(self.provenance_path(scan_id), {"rev": rev - 1, "slices": prov})
        with contextlib.suppress(FileNotFoundError):
            hist.unlink()
        return picked

    def max_label(self, scan_id: str, shape: tuple[int, int, int]) -> int:
        return int(self._read(scan_id, shape)[0].max(initial=0))

    def move_to_trash(self, scan_id: str, trash: Path) -> Path | None:
        """Move every label file of ``scan_id`` under ``trash`` (renames: labels never lost)."""
        if not self.has_files(scan_id):
            return None
        dest = trash / f"{scan_id}-{utc_now().replace(':', '').replace('+', 'Z')[:22]}"
        n = 1
        while dest.exists():
            n += 1
            dest = dest.with_name(f"{dest.name.split('~')[0]}~{n}")
        dest.mkdir(parents=True)
        for src in (self.mask_path(scan_id), self.provenance_path(scan_id)):
            if src.exists():
                os.replace(src, dest / src.name)
        if self.history_dir(scan_id).exists():
            shutil.move(str(self.history_dir(scan_id)), str(dest / "history"))
        self._cache.pop(scan_id, None)
        return dest
