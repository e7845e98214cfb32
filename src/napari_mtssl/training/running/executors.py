"""Where the units of a run train: in the run's own process, in processes side by side, or on a
Ray cluster.

The scheduler (:mod:`.pipeline`) hands an executor ready units and reads back their events and
results; an executor never decides what to train. Three of them:

* ``inline``: one unit at a time, in the run's own process and thread, advanced event by event
  (tests, debugging; a stop request lands at an exact step).
* ``local``: up to ``lanes`` units at once, each in a worker process with its share of the CPU
  threads. Two one-thread units do more work than one two-thread unit on a CPU (torch's small
  convolutions scale poorly over threads), so stage 1's independent models finish sooner side
  by side. A lane's worker lives as long as the run: the units after its first start without
  importing torch or opening the data again. A killed worker loses only its unit's progress
  since its last checkpoint (the lane gets a new worker).
* ``ray``: units as Ray tasks with the CPUs and GPUs they need, on a cluster that already
  exists (``address``: ``auto``, ``ray://host:port``, or None for a local instance); the
  workspace must be on storage every node sees. Events come back through a Ray queue; stop
  sets a flag every unit polls.

``poll`` gives each unit's events as their types (:mod:`napari_mtssl.events`), whichever way
they travelled. Each returns ``(unit id, result, error)`` for the units that ended: ``result`` is the unit's
JSON result (:func:`.units.train`), ``error`` a message (or the exception, inline) when it
failed. A failed unit does not stop the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from napari_mtssl import events as ev
from napari_mtssl.training.config import EXECUTORS
from napari_mtssl.training.running.jobs import JobWorker, drive
from napari_mtssl.training.running.units import Unit, UnitContext, train, unit_job

__all__ = [
    "EXECUTORS",
    "Executor",
    "InlineExecutor",
    "LocalExecutor",
    "RayExecutor",
    "make_executor",
]

Ended = tuple[str, dict | None, Any]
UNIT_TARGET = "napari_mtssl.training.running.units:unit_job"
WARM_TARGET = "napari_mtssl.training.running.units:warm_up"


class Executor:
    name = "executor"
    lanes = 1
    threads = 1  # CPU threads of each unit

    def has_room(self, running: int) -> bool:
        return running < self.lanes

    def start(self, unit: Unit, deadline: float | None, threads: int | None = None) -> None:
        """Start ``unit``; ``threads``: its CPU threads when not the executor's share (a unit
        that runs alone gets them all)."""
        raise NotImplementedError

    def poll(self, timeout: float) -> list[tuple[str, ev.Event]]:
        """Events of the running units, waiting up to ``timeout`` seconds for the first."""
        raise NotImplementedError

    def ended(self) -> list[Ended]:
        raise NotImplementedError

    def stop(self) -> None:
        """Ask every running unit to save its checkpoint and end."""

    def close(self) -> None:
        """Release what the executor holds (processes, cluster connection)."""


class InlineExecutor(Executor):
    name = "inline"

    def __init__(self, ctx: UnitContext, stop: Callable[[], bool]):
        self.ctx, self._stop = ctx, stop
        self.threads = int(ctx.cfg.num_threads or 1)
        self._gen: Any = None
        self._unit: Unit | None = None
        self._ended: list[Ended] = []

    def start(self, unit: Unit, deadline: float | None, threads: int | None = None) -> None:
        self._unit = unit
        self._gen = train(self.ctx, unit, self._stop, deadline)

    def poll(self, timeout: float) -> list[tuple[str, ev.Event]]:
        if self._gen is None:
            return []
        uid = self._unit.id
        try:
            return [(uid, next(self._gen))]
        except StopIteration as done:
            self._ended.append((uid, done.value, None))
        except Exception as exc:  # noqa: BLE001 - reported by the scheduler with the unit's name
            self._ended.append((uid, None, exc))
        self._gen = self._unit = None
        return []

    def ended(self) -> list[Ended]:
        out, self._ended = self._ended, []
        return out

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, workspace: str, run: str, lanes: int, threads: int):
        self.workspace, self.run = workspace, run
        self.lanes, self.threads = max(1, lanes), max(1, threads)
        # One worker per lane, started now: each imports the engine and opens the run's data
        # while the scheduler prepares, and keeps them for every unit it trains after.
        self._warm = (WARM_TARGET, {"workspace": workspace, "run": run, "threads": self.threads})
        self._idle = [JobWorker(self._warm) for _ in range(self.lanes)]
        self._jobs: dict[str, Any] = {}

    def _worker(self):
        while self._idle:
            worker = self._idle.pop(0)
            if worker.usable:
                return worker
            worker.close(5)
        return JobWorker(self._warm)

    def start(self, unit: Unit, deadline: float | None, threads: int | None = None) -> None:
        kwargs = {
            "workspace": self.workspace,
            "run": self.run,
            "unit": unit.to_dict(),
            "threads": threads or self.threads,
            "deadline": deadline,
        }
        worker = self._worker()
        worker.submit(UNIT_TARGET, kwargs)
        self._jobs[unit.id] = worker

    def poll(self, timeout: float) -> list[tuple[str, ev.Event]]:
        out: list[tuple[str, ev.Event]] = []
        end = time.monotonic() + timeout
        for uid, job in list(self._jobs.items()):
            wait = max(0.0, end - time.monotonic()) if not out else 0.0
            out += [(uid, e) for e in job.poll(wait / max(1, len(self._jobs)))]
        return out

    def ended(self) -> list[Ended]:
        out: list[Ended] = []
        for uid, job in list(self._jobs.items()):
            if job.state == "running":
                continue
            del self._jobs[uid]
            out.append((uid, job.result, job.error if job.state == "failed" else None))
            if job.state == "failed":  # whatever broke may have left the process unwell
                job.close(10)
            else:
                self._idle.append(job)
        return out

    def stop(self) -> None:
        for job in self._jobs.values():
            job.stop()

    def close(self) -> None:
        workers = list(self._jobs.values()) + self._idle
        for job in workers:
            job.shutdown()
        for job in workers:
            job.close(60)
        self._jobs.clear()
        self._idle.clear()


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, workspace: str, run: str, lanes: int, threads: int, gpus: float, address):
        ray = require_ray()
        connect(address)
        from ray.util.queue import Queue  # Ray is optional (require_ray said it is here)

        self.workspace, self.run = workspace, run
        self.lanes, self.threads, self.gpus = max(1, lanes), max(1, threads), gpus
        self._queue = Queue()
        self._flag = _stop_flag_actor().remote()
        self._refs: dict[str, Any] = {}
        self._ray = ray

    def start(self, unit: Unit, deadline: float | None, threads: int | None = None) -> None:
        n = threads or self.threads
        task = _remote_unit().options(num_cpus=n, num_gpus=self.gpus)
        self._refs[unit.id] = task.remote(
            self.workspace,
            self.run,
            unit.to_dict(),
            n,
            deadline,
            self._queue,
            self._flag,
        )

    def poll(self, timeout: float) -> list[tuple[str, ev.Event]]:
        import ray.util.queue  # Ray is optional: only a Ray executor gets here

        out: list[tuple[str, dict]] = []  # as they travelled
        try:
            out.append(self._queue.get(timeout=timeout))
            out += self._queue.get_nowait_batch(self._queue.qsize())
        except (ray.util.queue.Empty, ValueError):
            pass
        return [(uid, ev.parse(e)) for uid, e in out]

    def ended(self) -> list[Ended]:
        if not self._refs:
            return []
        refs = list(self._refs.values())
        ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
        out: list[Ended] = []
        for uid, ref in list(self._refs.items()):
            if ref not in ready:
                continue
            del self._refs[uid]
            try:
                out.append((uid, self._ray.get(ref), None))
            except Exception as exc:  # noqa: BLE001 - a failed Ray task: its message, by unit
                out.append((uid, None, _ray_error(exc)))
        return out

    def stop(self) -> None:
        self._flag.set.remote()

    def close(self) -> None:
        if self._refs:
            self.stop()
            self._ray.wait(list(self._refs.values()), num_returns=len(self._refs), timeout=120)
        self._refs.clear()


def _ray_error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return str(cause) if cause is not None else f"{type(exc).__name__}: {exc}"


def require_ray():
    try:  # Ray is optional: the ray extra
        import ray
    except ImportError:
        raise ValueError("the ray executor needs Ray: pip install 'napari-mtssl[ray]'") from None
    return ray


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (None: a local instance), with a clear message when
    it cannot be reached, before anything is trained."""
    ray = require_ray()
    if ray.is_initialized():
        return
    try:
        ray.init(address=address or None, ignore_reinit_error=True, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises several kinds; the user needs one line
        raise ValueError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None


_REMOTE: dict[str, Any] = {}


def _remote_unit():
    """The Ray task that trains one unit (defined on first use: Ray is optional)."""
    if "unit" not in _REMOTE:
        import ray  # Ray is optional: only a Ray executor gets here

        @ray.remote(max_retries=0)
        def ray_unit(workspace, run, unit, threads, deadline, queue, flag):
            uid = unit["id"]
            checked = {"t": 0.0, "stop": False}

            def stop() -> bool:
                now = time.monotonic()
                if not checked["stop"] and now - checked["t"] > 2.0:
                    checked["t"] = now
                    checked["stop"] = bool(ray.get(flag.is_set.remote()))
                return checked["stop"]

            gen = unit_job(workspace, run, unit, threads, deadline, stop)
            return drive(gen, lambda e: queue.put((uid, ev.wire(e))))

        _REMOTE["unit"] = ray_unit
    return _REMOTE["unit"]


def _stop_flag_actor():
    if "flag" not in _REMOTE:
        import ray  # Ray is optional: only a Ray executor gets here

        @ray.remote(num_cpus=0)
        class StopFlag:
            def __init__(self):
                self.value = False

            def set(self):
                self.value = True

            def is_set(self):
                return self.value

        _REMOTE["flag"] = StopFlag
    return _REMOTE["flag"]


def make_executor(
    name: str,
    ctx: UnitContext,
    stop: Callable[[], bool],
    *,
    lanes: int,
    threads: int,
    address: str | None = None,
) -> Executor:
    """The executor ``name`` for a run; ValueError naming the valid ones otherwise."""
    if name == "inline" or (name == "local" and lanes <= 1):
        return InlineExecutor(ctx, stop)
    ws, run = str(ctx.ws.root), ctx.run.id
    if name == "local":
        return LocalExecutor(ws, run, lanes, threads)
    if name == "ray":
        gpus = 1.0 if ctx.device.type == "cuda" else 0.0
        return RayExecutor(ws, run, lanes, threads, gpus, address)
    raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}; got {name!r}")
