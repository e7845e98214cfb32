"""One training run of the method over a workspace, as a generator (METHOD.md end to end).

``run_training`` writes everything into a workspace Run: ``config.json``, ``events.jsonl``,
``metrics.json`` (the report), ``models/<name>.safetensors`` (+ JSON sidecar) for ``baseline``,
``<task>:joint``, ``<task>:pretrain``, ``teacher:<task>`` (the selected one), ``all_joint`` and
``student``, and ``pipeline.json`` (which models are finished, so ``resume=`` skips them). A
finished run appends a round to the workspace history with the metrics of each model.

``what``:

* ``baseline`` | ``stage1`` | ``stage2`` | ``all`` (baseline + stage 1 + stage 2),
* ``retrain-quick``: fine-tune the latest student on the current labels (corrections included)
  with the latest teachers' targets, ``stage2.retrain_steps`` steps,
* ``retrain-stage2``: a new student distilled from the latest teachers with the current labels.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Generator
from typing import Any

import torch

from napari_mtssl._atomic import atomic_write_json

from . import checkpoints, stages
from .config import ExperimentConfig
from .data import StudyData, no_labelled_data_message
from .inference import resolve_device
from .trainer import evaluate

__all__ = ["WHATS", "run_training", "run_training_job", "find_model"]

WHATS = ("baseline", "stage1", "stage2", "all", "retrain-quick", "retrain-stage2")


def find_model(ws: Any, name: str):
    """The newest finished run holding model ``name`` (or None)."""
    for run in reversed(ws.runs()):
        if run.status == "done" and name in run.models():
            return run
    return None


def _teachers_run(ws: Any):
    for run in reversed(ws.runs()):
        if run.status == "done" and any(m.startswith("teacher:") for m in run.models()):
            return run
    return None


def plan_for(what: str, cfg: ExperimentConfig) -> list[str]:
    """The model names a run of ``what`` produces, in training order."""
    plan: list[str] = []
    if what in ("baseline", "all"):
        plan.append("baseline")
    if what in ("stage1", "all"):
        for t in cfg.stage1.tasks:
            if cfg.stage1.modes in ("joint", "both"):
                plan.append(f"{t}:joint")
            if cfg.stage1.modes in ("pretrain", "both"):
                plan.append(f"{t}:pretrain")
            plan.append(f"teacher:{t}")
        if cfg.all_joint and len(cfg.stage1.tasks) > 1:
            plan.append("all_joint")
    if what in ("stage2", "all", "retrain-quick", "retrain-stage2"):
        plan.append("student")
    return plan


def run_training(
    workspace: Any,
    config: ExperimentConfig,
    what: str = "all",
    *,
    stop: Callable[[], bool] | None = None,
    resume: str | None = None,
) -> Generator[dict, None, dict]:
    """Train ``what`` on the workspace's current labels; yields events, returns the report."""
    if what not in WHATS:
        raise ValueError(f"what must be one of {', '.join(WHATS)}; got {what!r}")
    ws = workspace
    cfg = ExperimentConfig.from_dict(config.to_dict())  # validated private copy
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    stop = stop or (lambda: False)

    study = StudyData.from_workspace(ws, cfg.data, cfg.seed)
    if not study.labelled_slices():
        raise ValueError(no_labelled_data_message())
    if what in ("stage1", "all"):
        if not cfg.stage1.tasks:
            raise ValueError("stage 1 needs at least one auxiliary task (stage1.tasks is empty)")
        stages.require_tasks(study.summary(), cfg.stage1.tasks, cfg)
    teacher_run = student_run = None
    if what in ("stage2", "retrain-quick", "retrain-stage2"):
        teacher_run = _teachers_run(ws)
        if teacher_run is None:
            raise ValueError(f"{what} needs the teachers of a finished stage 1; run stage 1 first")
        if what == "retrain-quick":
            student_run = find_model(ws, "student")
            if student_run is None:
                raise ValueError("retrain-quick needs a trained student; run stage 2 first")

    if resume:
        run = ws.run(resume)
        if run.kind != what:
            raise ValueError(f"run {resume} trained {run.kind!r}, not {what!r}")
        state = (
            json.loads((run.path / "pipeline.json").read_text())
            if (run.path / "pipeline.json").is_file()
            else {}
        )
        run.set_status("running")
    else:
        run = ws.new_run(what, cfg.to_dict())
        state = {}
    state.setdefault("models", {})
    state.setdefault("selected", {})
    models: dict[str, dict] = state["models"]
    selected: dict[str, dict] = state["selected"]
    ckpt = run.checkpoint_dir
    arch = stages.arch_meta(cfg, study)
    plan = plan_for(what, cfg)
    t_start = time.perf_counter()

    def save_state() -> None:
        atomic_write_json(run.path / "pipeline.json", state)

    def log(event: dict) -> dict:
        if event.get("type") != "progress" or _log_step(event):
            run.append_event(event)
        return event

    def finish(name: str, res: dict, *, mode: str | None, task: str | None) -> Generator:
        net = res["net"]
        m = res.get("metrics") or evaluate(
            net, study.val, study, device, amp=cfg.optim.amp, hd95=True
        )
        entry = {
            "dice": m["dice"],
            "mean_dice": m["mean_dice"],
            "hd95": m["hd95"],
            "steps": int(res["steps"]),
            "seconds": round(float(res["seconds"]), 2),
            "mode": mode,
            "task": task,
        }
        checkpoints.save_model(
            net,
            run.model_path(name),
            {**arch, "name": name, "metrics": entry, "run": run.id, "seed": cfg.seed},
        )
        models[name] = entry
        save_state()
        yield log({"type": "model_done", "model": name, **entry})

    def stopped(res: dict) -> dict:
        save_state()
        run.set_status("stopped", step=res.get("step"), unit=res.get("name"))
        ev = {"type": "stopped", "run": run.id, "unit": res.get("name"), "step": res.get("step")}
        return ev

    def load(name: str, src=None) -> torch.nn.Module:
        net, _ = checkpoints.load_model((src or run).model_path(name), device)
        return net

    try:
        yield log(
            {
                "type": "start",
                "run": run.id,
                "what": what,
                "device": str(device),
                "plan": plan,
                "resumed": bool(resume),
                "data": study.describe(),
            }
        )
        for note in study.notes:
            yield log({"type": "note", "message": note})

        def wrap(gen: Generator) -> Generator:
            """Relay a stage's events (logging them) and return its result."""
            res = yield from _relay(gen, log)
            return res

        if "baseline" in plan and "baseline" not in models:
            res = yield from wrap(stages.baseline(study, cfg, device, ckpt, stop))
            if res["stopped"]:
                yield log(stopped(res))
                return {"stopped": True, "run": run.id}
            yield from finish("baseline", res, mode=None, task=None)

        if what in ("stage1", "all"):
            for task in cfg.stage1.tasks:
                for mode, fn in (("joint", stages.joint), ("pretrain", stages.pretrain)):
                    name = f"{task}:{mode}"
                    if name not in plan or name in models:
                        continue
                    res = yield from wrap(fn(task, study, cfg, device, ckpt, stop))
                    if res["stopped"]:
                        yield log(stopped(res))
                        return {"stopped": True, "run": run.id}
                    yield from finish(name, res, mode=mode, task=task)
                if f"teacher:{task}" not in models:
                    scores = {
                        m: models[f"{task}:{m}"]["mean_dice"]
                        for m in ("joint", "pretrain")
                        if f"{task}:{m}" in models
                    }
                    mode = stages.select_mode(scores)
                    src = f"{task}:{mode}"
                    checkpoints.save_model(
                        load(src),
                        run.model_path(f"teacher:{task}"),
                        {
                            **arch,
                            "name": f"teacher:{task}",
                            "selected_from": src,
                            "metrics": models[src],
                            "run": run.id,
                            "seed": cfg.seed,
                        },
                    )
                    models[f"teacher:{task}"] = {**models[src], "mode": mode}
                    selected[task] = {
                        "mode": mode,
                        "joint": scores.get("joint"),
                        "pretrain": scores.get("pretrain"),
                    }
                    save_state()
                    yield log({"type": "selected", "task": task, **selected[task]})
            if "all_joint" in plan and "all_joint" not in models:
                res = yield from wrap(
                    stages.all_joint(cfg.stage1.tasks, study, cfg, device, ckpt, stop)
                )
                if res["stopped"]:
                    yield log(stopped(res))
                    return {"stopped": True, "run": run.id}
                yield from finish("all_joint", res, mode="joint", task="all")

        if "student" in plan and "student" not in models:
            if what == "all":
                tnames = [f"teacher:{t}" for t in cfg.stage1.tasks]
                trun = run
            else:
                trun = teacher_run
                tnames = [m for m in trun.models() if m.startswith("teacher:")]
            teachers = [load(n, trun) for n in tnames]
            init = None
            steps = cfg.stage2.steps
            if what == "retrain-quick":
                init = load("student", student_run)
                steps = cfg.stage2.retrain_steps
            elif cfg.stage2.init == "best_teacher":
                scores = [
                    (
                        checkpoints.read_model_meta(trun.model_path(n))
                        .get("metrics", {})
                        .get("mean_dice")
                        or 0.0
                    )
                    for n in tnames
                ]
                init = teachers[max(range(len(scores)), key=scores.__getitem__)]
            yield log({"type": "note", "message": f"teachers: {', '.join(tnames)}"})
            res = yield from wrap(
                stages.student(
                    teachers,
                    study,
                    cfg,
                    device,
                    ckpt,
                    stop,
                    init=init,
                    steps=steps,
                    stage="retrain" if what.startswith("retrain") else "stage2",
                )
            )
            if res["stopped"]:
                yield log(stopped(res))
                return {"stopped": True, "run": run.id}
            yield from finish("student", res, mode=None, task=None)
            state["teachers"] = {"run": trun.id, "models": tnames}
            save_state()
    except BaseException as exc:
        # GeneratorExit: the consumer dropped us (a job was killed): leave a resumable state.
        status = "stopped" if isinstance(exc, GeneratorExit) else "failed"
        save_state()
        run.set_status(status, error=str(exc) or type(exc).__name__)
        raise

    report = {
        "run": run.id,
        "what": what,
        "device": str(device),
        "models": models,
        "selected": selected,
        "teachers": state.get("teachers"),
        "config": cfg.to_dict(),
        "data": study.describe(),
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    run.write_metrics(report)
    rnd = ws.add_round(
        {
            "run": run.id,
            "what": what,
            "labelled_slices": study.summary().n_labelled_slices,
            "metrics": {
                k: {"mean_dice": v["mean_dice"], "hd95": v["hd95"]} for k, v in models.items()
            },
        }
    )
    report["round"] = rnd
    run.write_metrics(report)
    run.set_status("done")
    yield log({"type": "done", "run": run.id, "round": rnd})
    return report


def _log_step(event: dict) -> bool:
    total = int(event.get("total") or 1)
    step = int(event.get("step") or 0)
    return step == total or step % max(1, total // 20) == 0


def _relay(gen: Generator, log: Callable[[dict], dict]) -> Generator[dict, None, dict]:
    while True:
        try:
            ev = next(gen)
        except StopIteration as done:
            return done.value
        yield log(ev)


def job_threads(cpus: int | None = None) -> int:
    """CPU threads for a training job that shares the machine with the viewer that started it.

    One core is left to napari, so the viewer stays responsive. It matters for speed too:
    torch's OpenMP threads busy-wait for each other, so a job using every core next to other
    busy processes slows down many times over. Measured on the 2-core development machine with
    three other busy processes: a width-8 U-Net step took 0.07-0.12 s with one thread and
    0.7-2.9 s with two.
    """
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus - 1)


def run_training_job(
    workspace: str,
    config: dict,
    what: str = "all",
    stop: Callable[[], bool] | None = None,
    resume: str | None = None,
) -> Generator[dict, None, dict]:
    """JSON-able entry point for the job process (``JobHandle`` target)."""
    from napari_mtssl.workspace import Workspace

    ws = Workspace.open(workspace)
    cfg = ExperimentConfig.from_dict(config)
    if not cfg.num_threads:
        cfg.num_threads = job_threads()
    report = yield from run_training(ws, cfg, what, stop=stop, resume=resume)
    return report
