"""The study on disk: scans, labels with per-slice provenance, runs and rounds.

Layout of a workspace folder::

    workspace.json      format version, label names, scans (path, sha256, shape, spacing,
                        split, ...), rounds
    workspace.lock      present while a process rewrites workspace.json or label files
    scans/<id>.nii.gz   stored copies of scans that have no file of their own
    labels/             see :mod:`napari_mtssl.workspace.labels`
    runs/<id>/          see :mod:`napari_mtssl.workspace.runs`
    trash/              label files of removed scans (labels are never deleted)

Several processes may hold the same workspace open (the napari viewer and a training worker).
Writers take the lock file, re-read ``workspace.json``, change it and replace it atomically;
readers never block and pick up a replaced file at their next access.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_mtssl._atomic import atomic_write_json, atomic_write_with
from napari_mtssl.io import formats, read_scans
from napari_mtssl.io.nifti import read_nifti_copy, write_nifti_scan
from napari_mtssl.io.scan import Scan

from ._errors import WorkspaceError
from ._lock import FileLock, LockTimeout
from .labels import LabelStore
from .runs import RESUMABLE, Run, utc_now

FORMAT_NAME = "napari-mtssl-workspace"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test", "unused")
WORKSPACE_FILE = "workspace.json"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ScanRecord:
    """What the workspace knows about one scan without reading it.

    ``path`` is absolute (the stored copy for ``stored`` scans); ``source`` is where the scan
    came from when known; ``source_index`` picks the scan among those ``read_scans(path)`` gives.
    """

    id: str
    name: str
    path: Path
    sha256: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    split: str
    modality: str
    stored: bool
    source: str | None = None
    source_index: int = 0
    added: str = ""


def _sha256_file(path: Path, h: Any | None = None) -> Any:
    h = h if h is not None else hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h


def _folder_files(folder: Path) -> list[Path]:
    """Files of a folder, sorted, hidden ones (OS droppings, our temp files) left out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def checksum(path: Path) -> str:
    """sha256 of a file, or of a folder's sorted relative file names and contents."""
    if path.is_dir():
        h = hashlib.sha256()
        for f in _folder_files(path):
            h.update(f.relative_to(path).as_posix().encode("utf-8") + b"\0")
            h.update(f"{f.stat().st_size}\0".encode())
            _sha256_file(f, h)
        return h.hexdigest()
    return _sha256_file(path).hexdigest()


def _stat_signature(path: Path) -> tuple:
    """Cheap fingerprint (mtime, size) used to skip re-hashing unchanged files."""
    if path.is_dir():
        return tuple(
            (f.relative_to(path).as_posix(), f.stat().st_mtime_ns, f.stat().st_size)
            for f in _folder_files(path)
        )
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


def _slug(name: str) -> str:
    base = formats.strip_suffix(name.strip())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", base)
    slug = re.sub(r"[-.]{2,}", "-", slug).strip("-._")
    return slug[:40].rstrip("-._") or "scan"


class Workspace:
    """A study folder. Create with :meth:`create`, open with :meth:`open`."""

    def __init__(self, root: str | os.PathLike, *, _data: dict[str, Any] | None = None):
        # Use create() or open(); this only wires the object to an existing folder.
        self.root = Path(root).resolve()
        self.lock = FileLock(self.root / "workspace.lock")
        self._labels = LabelStore(self.root / "labels")
        self._data: dict[str, Any] = {}
        self._data_key: tuple | None = None
        self._verified: dict[str, tuple] = {}
        self._reload()
        self._check_folders()

    # -- create / open -----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        *,
        label_names: dict[int, str] | None = None,
        exist_ok: bool = False,
    ) -> Workspace:
        """Make a new workspace in ``root`` (an empty or missing folder).

        ``exist_ok`` opens an existing workspace instead of failing (label names given here are
        then ignored). A non-empty folder that is not a workspace is refused: we will not mix
        our files with someone else's.
        """
        root = Path(root)
        file = root / WORKSPACE_FILE
        if file.exists():
            if exist_ok:
                return cls.open(root)
            raise WorkspaceError(
                file,
                "a workspace already exists here; use it as it is (give this folder to the "
                "other napari-mtssl commands, Open workspace… in napari, Workspace.open() in "
                "Python) or choose another folder",
            )
        if root.exists() and not root.is_dir():
            raise WorkspaceError(root, "is a file, not a folder")
        if root.is_dir() and any(
            p.name != "workspace.lock" and not p.name.startswith(".workspace.lock.")
            for p in root.iterdir()
        ):
            raise WorkspaceError(
                root, "folder is not empty and is not a workspace; choose an empty folder"
            )
        names = _check_label_names(
            label_names if label_names is not None else {0: "background", 1: "foreground"}, file
        )
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(root / "workspace.lock")
        with lock:
            if file.exists():  # someone else created it while we checked
                raise WorkspaceError(
                    file,
                    "a workspace already exists here; use it as it is (give this folder to "
                    "the other napari-mtssl commands, Open workspace… in napari, "
                    "Workspace.open() in Python) or choose another folder",
                )
            atomic_write_json(
                file,
                {
                    "format": FORMAT_NAME,
                    "version": FORMAT_VERSION,
                    "created": utc_now(),
                    "label_names": {str(k): v for k, v in names.items()},
                    "scans": [],
                    "rounds": [],
                },
            )
        return cls(root)

    @classmethod
    def open(cls, root: str | os.PathLike) -> Workspace:
        root = Path(root)
        if not (root / WORKSPACE_FILE).is_file():
            raise WorkspaceError(
                root / WORKSPACE_FILE,
                "not a napari-mtssl workspace (no workspace.json); create one with napari-mtssl init",
            )
        return cls(root)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r}, scans={len(self._state()['scans'])})"

    # -- workspace.json ----------------------------------------------------------------------
    @property
    def file(self) -> Path:
        return self.root / WORKSPACE_FILE

    def _check_folders(self) -> None:
        """The workspace's own folders must be real folders inside it: a symlinked labels/ (or
        runs/, scans/, ...) would make saves write somewhere else."""
        root = self.root.resolve()
        for name in ("labels", "runs", "scans", "trash", "cache"):
            p = self.root / name
            if p.is_symlink() or (p.exists() and root not in p.resolve().parents):
                raise WorkspaceError(
                    p,
                    "is a link to somewhere outside the workspace; the workspace writes only "
                    "inside its own folder. Replace it by a real folder",
                )

    def _reload(self) -> None:
        file = self.file
        try:
            st = file.stat()
            raw = file.read_bytes()
        except FileNotFoundError:
            raise WorkspaceError(file, "workspace.json is missing") from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise WorkspaceError(file, f"workspace.json is corrupt ({exc})") from None
        _validate_state(data, file)
        self._data = data
        self._data_key = (st.st_ino, st.st_mtime_ns, st.st_size)

    def _state(self) -> dict[str, Any]:
        """The current workspace.json, re-read when another process replaced it."""
        try:
            st = self.file.stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key != self._data_key:
            self._reload()
        return self._data

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            with self.lock():
                yield
        except LockTimeout as exc:
            raise WorkspaceError(self.lock.path, str(exc).split(": ", 1)[-1]) from None

    def _update(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        """Read-modify-write of workspace.json under the lock; ``change`` edits a copy.

        If ``change`` raises, nothing is written.
        """
        with self._writing():
            self._reload()
            data = json.loads(json.dumps(self._data))
            result = change(data)
            _validate_state(data, self.file)
            atomic_write_json(self.file, data)
            self._data = data
            st = self.file.stat()
            self._data_key = (st.st_ino, st.st_mtime_ns, st.st_size)
            return result

    # -- label names -------------------------------------------------------------------------
    @property
    def label_names(self) -> dict[int, str]:
        return {int(k): v for k, v in self._state()["label_names"].items()}

    def set_label_names(self, names: dict[int, str]) -> None:
        """Replace the label names; refused if a stored mask uses a class the names drop."""
        checked = _check_label_names(names, self.file)
        n = max(max(checked) + 1, 2)
        with self._writing():
            for sid in self.scan_ids():
                top = self._labels.max_label(sid, self.record(sid).shape)
                if top >= n:
                    raise WorkspaceError(
                        self._labels.mask_path(sid),
                        f"scan {sid!r} has labels of class {top}, which the new names drop",
                    )

            def change(data: dict[str, Any]) -> None:
                data["label_names"] = {str(k): v for k, v in checked.items()}

            self._update(change)

    @property
    def num_classes(self) -> int:
        """Classes a model predicts: max label id + 1 (at least 2: background and one organ)."""
        return max(max(self.label_names, default=0) + 1, 2)

    # -- scans -------------------------------------------------------------------------------
    def scan_ids(self, split: str | None = None) -> list[str]:
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return [s["id"] for s in self._state()["scans"] if split is None or s["split"] == split]

    def _entry(self, scan_id: str) -> dict[str, Any]:
        for s in self._state()["scans"]:
            if s["id"] == scan_id:
                return s
        raise WorkspaceError(
            self.file, f"no scan {scan_id!r} in this workspace (scans: {self.scan_ids()})"
        )

    def record(self, scan_id: str) -> ScanRecord:
        s = self._entry(scan_id)
        path = Path(s["path"])
        return ScanRecord(
            id=s["id"],
            name=s["name"],
            path=path if path.is_absolute() else self.root / path,
            sha256=s["sha256"],
            shape=tuple(int(v) for v in s["shape"]),  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in s["spacing"]),  # type: ignore[arg-type]
            split=s["split"],
            modality=s.get("modality", "unknown"),
            stored=bool(s["stored"]),
            source=s.get("source"),
            source_index=int(s.get("source_index", 0)),
            added=s.get("added", ""),
        )

    def _new_id(self, data: dict[str, Any], name: str, wanted: str | None) -> str:
        taken = {s["id"] for s in data["scans"]}

        def free(sid: str) -> bool:
            # Ids whose old label files are still around are never reused: those labels
            # belong to another scan.
            return (
                sid not in taken
                and not self._labels.has_files(sid)
                and not (self.root / "scans" / f"{sid}.nii.gz").exists()
            )

        if wanted is not None:
            if not _ID_RE.match(wanted) or ".." in wanted:
                raise WorkspaceError(
                    self.file,
                    f"scan id {wanted!r} is not allowed: use letters, digits, '_', '-', '.' "
                    "(at most 64, starting with a letter or digit)",
                )
            if not free(wanted):
                raise WorkspaceError(self.file, f"scan id {wanted!r} is already used")
            return wanted
        base = _slug(name)
        sid, n = base, 1
        while not free(sid):
            n += 1
            sid = f"{base}-{n}"
        return sid

    def add_scan(
        self,
        scan: Scan,
        *,
        split: str = "train",
        store_copy: bool | None = None,
        scan_id: str | None = None,
        source_index: int = 0,
    ) -> str:
        """Record ``scan``; returns its id.

        A scan read from a file or folder (``scan.source``) is recorded by path and sha256, so
        a large study is not duplicated. ``store_copy=None`` stores a NIfTI copy under
        ``scans/`` only when there is no source on disk (synthetic or in-memory scans);
        ``True`` always stores one. ``source_index`` says which of ``read_scans(source)`` this
        scan is (a DICOM folder can hold several series).
        """
        if split not in SPLITS:
            raise WorkspaceError(self.file, f"split must be one of {SPLITS}, got {split!r}")
        if not isinstance(scan, Scan):
            raise WorkspaceError(self.file, f"add_scan expects a Scan, got {type(scan).__name__}")
        source = Path(scan.source).resolve() if scan.source else None
        has_source = source is not None and source.exists()
        store = (not has_source) if store_copy is None else bool(store_copy)
        if not store and not has_source:
            raise WorkspaceError(
                f"scan {scan.name!r}",
                f"has no file on disk (source {scan.source!r}); add it with store_copy=True",
            )
        sha = "" if store else self._checksum_cached(source)  # type: ignore[arg-type]

        with self._writing():
            self._reload()
            sid = self._new_id(self._data, scan.name, scan_id)
            rel_path: str
            if store:
                dest = self.root / "scans" / f"{sid}.nii.gz"
                atomic_write_with(dest, lambda tmp: write_nifti_scan(scan, tmp))
                sha = self._checksum_cached(dest)
                rel_path = f"scans/{sid}.nii.gz"
            else:
                rel_path = str(source)
            entry = {
                "id": sid,
                "name": scan.name,
                "path": rel_path,
                "sha256": sha,
                "shape": list(scan.shape),
                "spacing": list(scan.spacing),
                "split": split,
                "modality": scan.modality,
                "stored": store,
                "source": str(source) if has_source else scan.source,
                "source_index": int(source_index),
                "added": utc_now(),
            }
            self._update(lambda data: data["scans"].append(entry))
        return sid

    def remove_scan(self, scan_id: str) -> None:
        """Forget a scan. Its label files move to ``trash/`` (labels are never deleted)."""
        rec = self.record(scan_id)
        with self._writing():

            def change(data: dict[str, Any]) -> None:
                data["scans"] = [s for s in data["scans"] if s["id"] != scan_id]

            # workspace.json first: if we are killed before the move, the orphaned label files
            # stay in labels/ and their id is never handed out again.
            self._update(change)
            dest = self._labels.move_to_trash(scan_id, self.root / "trash")
            if rec.stored and rec.path.exists():
                dest = dest or self._labels_trash_dir(scan_id)
                os.replace(rec.path, dest / rec.path.name)
        self._verified.pop(str(rec.path), None)

    def _labels_trash_dir(self, scan_id: str) -> Path:
        dest = self.root / "trash" / f"{scan_id}-{utc_now().replace(':', '')[:17]}"
        dest.mkdir(parents=True, exist_ok=True)
        return dest

    def set_split(self, scan_id: str, split: str) -> None:
        if split not in SPLITS:
            raise WorkspaceError(self.file, f"split must be one of {SPLITS}, got {split!r}")
        self._entry(scan_id)

        def change(data: dict[str, Any]) -> None:
            for s in data["scans"]:
                if s["id"] == scan_id:
                    s["split"] = split

        self._update(change)

    def _checksum_cached(self, path: Path) -> str:
        """sha256 of ``path``, remembered per session while its mtime and size stay the same."""
        sig = _stat_signature(path)
        key = str(path)
        hit = self._verified.get(key)
        if hit is not None and hit[0] == sig:
            return hit[1]
        sha = checksum(path)
        self._verified[key] = (sig, sha)
        return sha

    def load_scan(self, scan_id: str, *, verify: bool = True) -> Scan:
        """Read a scan back in ``(z, y, x)``; checks it is the file that was added.

        ``verify`` compares the sha256 (computed once per session while the file's mtime and
        size stay the same) and raises WorkspaceError if the file changed since it was added.
        """
        rec = self.record(scan_id)
        if not rec.path.exists():
            what = "stored copy" if rec.stored else "file"
            raise WorkspaceError(
                rec.path,
                f"the {what} of scan {scan_id!r} is missing (moved or deleted since it was added)",
            )
        if verify:
            sha = self._checksum_cached(rec.path)
            if sha != rec.sha256:
                raise WorkspaceError(
                    rec.path,
                    f"the file changed since it was added as scan {scan_id!r} (sha256 was "
                    f"{rec.sha256[:12]}..., now {sha[:12]}...); its labels may no longer fit. "
                    "Add it again as a new scan, or call relink_scan to accept the change",
                )
        if rec.stored:
            try:
                scan = read_nifti_copy(rec.path, name=rec.name, modality=rec.modality)
            except Exception as exc:  # nibabel raises many types for a damaged file
                raise WorkspaceError(rec.path, f"cannot read the stored scan ({exc})") from None
            scan.source = rec.source
        else:
            scan = self._read_source(rec)
        if tuple(scan.shape) != rec.shape:
            raise WorkspaceError(
                rec.path,
                f"scan {scan_id!r} now reads with shape {scan.shape}, recorded {rec.shape}",
            )
        return scan

    def _read_source(self, rec: ScanRecord) -> Scan:
        scans = read_scans(rec.path)
        if not 0 <= rec.source_index < len(scans):
            raise WorkspaceError(
                rec.path,
                f"holds {len(scans)} scan(s); scan {rec.id!r} was number {rec.source_index}",
            )
        scan = scans[rec.source_index]
        scan.name = rec.name
        return scan

    def relink_scan(self, scan_id: str, path: str | os.PathLike | None = None) -> None:
        """Accept a moved or changed source file: record its new path and checksum.

        The file must still read with the recorded shape, so that the stored labels fit it.
        """
        rec = self.record(scan_id)
        if rec.stored and path is not None:
            raise WorkspaceError(rec.path, f"scan {scan_id!r} is a stored copy; it has no source")
        new = Path(path).resolve() if path is not None else rec.path
        if not new.exists():
            raise WorkspaceError(new, "file not found")
        candidate = replace(rec, path=new)
        if rec.stored:
            scan = read_nifti_copy(new, name=rec.name, modality=rec.modality)
        else:
            scan = self._read_source(candidate)
        if tuple(scan.shape) != rec.shape:
            raise WorkspaceError(
                new, f"reads with shape {scan.shape} but scan {scan_id!r} has shape {rec.shape}"
            )
        sha = checksum(new)

        def change(data: dict[str, Any]) -> None:
            for s in data["scans"]:
                if s["id"] == scan_id:
                    if not rec.stored:
                        s["path"] = str(new)
                        s["source"] = str(new)
                    s["sha256"] = sha

        self._update(change)

    # -- labels ------------------------------------------------------------------------------
    def labels(self, scan_id: str) -> np.ndarray:
        """The stored mask ``(z, y, x)`` (uint8 or uint16); zeros where nothing is stored."""
        return self._labels.labels(scan_id, self.record(scan_id).shape)

    def labels_signature(self, scan_id: str) -> tuple[int, int, int] | None:
        """Changes whenever the scan's stored labels change (a cache of what was computed
        from them can tell it is stale); None while it has none."""
        self._entry(scan_id)  # an unknown scan: the error that names it
        return self._labels.signature(scan_id)

    def slice_status(self, scan_id: str) -> list[str]:
        """Per slice: "unlabelled", "annotated" (by a person) or "corrected" (a fixed prediction)."""
        return self._labels.slice_status(scan_id, self.record(scan_id).shape)

    def labelled_slices(self, scan_id: str) -> list[int]:
        codes = self._labels.status_codes(scan_id, self.record(scan_id).shape)
        return [int(z) for z in np.flatnonzero(codes)]

    def provenance(self, scan_id: str, z: int) -> list[dict[str, Any]]:
        """History of slice ``z``, newest last: {status, by, model, round, time}."""
        return self._labels.provenance(scan_id, self.record(scan_id).shape, z)

    def set_labels(
        self,
        scan_id: str,
        labels: np.ndarray,
        slices: Iterable[int] | None = None,
        *,
        status: str = "annotated",
        by: str = "user",
        model: str | None = None,
        round: int | None = None,
        details: dict[int, dict[str, Any]] | None = None,
    ) -> list[int]:
        """Store the given slices of a full ``(z, y, x)`` label volume; returns them sorted.
        ``details``: extra provenance per slice (``{z: {"effort_s": 41.5}}``).

        ``slices=None`` writes every slice with foreground. Listing slices writes exactly those,
        empty ones included: that is how a person says "this slice has no organ". The previous
        content of the written slices is kept so :meth:`undo_last` can restore it. ``round``
        defaults to the current round.
        """
        rec = self.record(scan_id)
        with self._writing():
            return self._labels.set_labels(
                scan_id,
                rec.shape,
                labels,
                slices,
                status=status,
                by=by,
                model=model,
                round=self.current_round if round is None else int(round),
                num_classes=self.num_classes,
                details=details,
            )

    def clear_slices(self, scan_id: str, slices: Iterable[int], *, by: str = "user") -> list[int]:
        """Mark slices unlabelled (mask zeroed); their previous content is kept for undo."""
        rec = self.record(scan_id)
        with self._writing():
            return self._labels.clear_slices(
                scan_id, rec.shape, slices, by=by, round=self.current_round
            )

    def undo_last(self, scan_id: str) -> list[int]:
        """Undo the last set_labels/clear_slices of a scan; returns the restored slices."""
        rec = self.record(scan_id)
        with self._writing():
            return self._labels.undo_last(scan_id, rec.shape)

    def summary(self) -> list[dict[str, Any]]:
        out = []
        for sid in self.scan_ids():
            rec = self.record(sid)
            codes = self._labels.status_codes(sid, rec.shape)
            out.append(
                {
                    "id": sid,
                    "name": rec.name,
                    "split": rec.split,
                    "n_slices": rec.shape[0],
                    "n_annotated": int(np.count_nonzero(codes == 1)),
                    "n_corrected": int(np.count_nonzero(codes == 2)),
                }
            )
        return out

    # -- runs --------------------------------------------------------------------------------
    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def new_run(self, kind: str, config: dict[str, Any], round: int | None = None) -> Run:
        """A new ``runs/<time>-<kind>/`` folder in status "running"; ``round`` defaults to
        the current round."""
        if not isinstance(kind, str) or not kind:
            raise WorkspaceError(
                self.runs_dir, f"run kind must be a non-empty string, got {kind!r}"
            )
        stamp = utc_now()[:19].replace("-", "").replace(":", "").replace("T", "-")
        base = f"{stamp}-{_slug(kind)}"
        rnd = self.current_round if round is None else int(round)
        self.runs_dir.mkdir(exist_ok=True)
        for n in range(1, 1000):
            path = self.runs_dir / (base if n == 1 else f"{base}-{n}")
            try:
                return Run.create(path, kind=kind, config=config, round=rnd)
            except FileExistsError:
                continue
        raise WorkspaceError(self.runs_dir, "could not find a free run folder name")

    def runs(self) -> list[Run]:
        """All complete runs, oldest first."""
        if not self.runs_dir.is_dir():
            return []
        out = []
        for p in self.runs_dir.iterdir():
            if p.is_dir() and (p / "run.json").is_file():
                out.append(Run(p))
        return sorted(out, key=lambda r: (r.created, r.id))

    def resumable_run(self) -> Run | None:
        """The run a "resume" goes on with (the one rule of the CLI and the Training dock): the
        newest run that stopped, was interrupted or failed after it planned, unless a run
        finished after it (an older unfinished run is then history: name it to resume it)."""
        for run in reversed(self.runs()):
            if run.status == "done":
                return None
            if run.status in RESUMABLE and (run.path / "plan.json").is_file():
                return run
        return None

    def run(self, run_id: str) -> Run:
        path = self.runs_dir / run_id
        if "/" in run_id or "\\" in run_id or not (path / "run.json").is_file():
            raise WorkspaceError(path, f"no run {run_id!r} in this workspace")
        return Run(path)

    def latest_run(self, kind: str | None = None, status: str | None = "done") -> Run | None:
        """Newest run of ``kind`` (any kind if None) whose status is ``status`` (any if None)."""
        for r in reversed(self.runs()):
            if (kind is None or r.kind == kind) and (status is None or r.status == status):
                return r
        return None

    # -- rounds ------------------------------------------------------------------------------
    def add_round(self, entry: dict[str, Any]) -> int:
        """Record one round (what was trained, metrics, corrections); returns its number."""
        if not isinstance(entry, dict):
            raise WorkspaceError(self.file, "a round entry must be a dict")
        json.dumps(entry)  # not JSON-able -> TypeError before anything is written

        def change(data: dict[str, Any]) -> int:
            n = len(data["rounds"]) + 1
            data["rounds"].append({**entry, "round": n, "time": utc_now()})
            return n

        return self._update(change)

    def corrections_in_round(self, rnd: int) -> dict[str, Any]:
        """What was corrected in round ``rnd`` (before the run that ended it): the number of
        slices, who corrected them, and the seconds people spent where it was timed."""
        slices, timed, effort = 0, 0, 0.0
        by: dict[str, int] = {}
        for sid in self.scan_ids():
            for e in self._labels.corrections(sid, self.record(sid).shape, rnd):
                slices += 1
                who = str(e.get("by", "?"))
                by[who] = by.get(who, 0) + 1
                if isinstance(e.get("effort_s"), int | float):
                    timed += 1
                    effort += float(e["effort_s"])
        return {"slices": slices, "by": by, "timed_slices": timed, "effort_s": round(effort, 1)}

    def rounds(self) -> list[dict[str, Any]]:
        return json.loads(json.dumps(self._state()["rounds"]))

    @property
    def current_round(self) -> int:
        return len(self._state()["rounds"])


def _check_label_names(names: Any, where: object) -> dict[int, str]:
    if not isinstance(names, dict) or not names:
        raise WorkspaceError(where, "label names must be a non-empty dict {class id: name}")
    out: dict[int, str] = {}
    for k, v in names.items():
        try:
            key = int(k)
        except (TypeError, ValueError):
            raise WorkspaceError(where, f"label id {k!r} is not an integer") from None
        if key < 0 or key > 65535 or not isinstance(v, str) or not v.strip():
            raise WorkspaceError(where, f"label {k!r}: {v!r} is not a valid id/name pair")
        out[key] = v
    return dict(sorted(out.items()))


def _validate_state(data: Any, file: Path) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise WorkspaceError(file, "not a napari-mtssl workspace file")
    version = data.get("version")
    if not isinstance(version, int):
        raise WorkspaceError(file, "workspace.json has no format version")
    if version > FORMAT_VERSION:
        raise WorkspaceError(
            file,
            f"written by a newer napari-mtssl (format {version}); this version reads up to "
            f"{FORMAT_VERSION}. Update napari-mtssl to open it",
        )
    for key, kind in (("label_names", dict), ("scans", list), ("rounds", list)):
        if not isinstance(data.get(key), kind):
            raise WorkspaceError(file, f"workspace.json is corrupt: {key!r} missing or malformed")
    need = {"id", "name", "path", "sha256", "shape", "spacing", "split", "stored"}
    for s in data["scans"]:
        if not isinstance(s, dict) or not need <= s.keys():
            raise WorkspaceError(file, f"workspace.json is corrupt: bad scan entry {s!r:.80}")
        if s["split"] not in SPLITS or not _ID_RE.match(str(s["id"])):
            raise WorkspaceError(file, f"workspace.json is corrupt: bad scan entry {s['id']!r}")
        if s["stored"]:
            # A stored copy lives in scans/; anything else would let a tampered file make
            # the workspace move or overwrite a file outside it (remove_scan moves it to trash).
            rel = Path(str(s["path"]))
            if rel.is_absolute() or rel.parent != Path("scans") or rel.name in ("", ".", ".."):
                raise WorkspaceError(
                    file,
                    f"scan {s['id']!r} is marked as a stored copy at {s['path']!r}, which is not "
                    "in the workspace's scans/ folder; refusing to use this workspace file",
                )
    _check_label_names(data["label_names"], file)
