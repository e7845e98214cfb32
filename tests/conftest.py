"""Shared test settings: where the real data lives (``../shared/data/acdc`` from the project root,
or ``$MTSSL_ACDC``). Tests that need it skip, naming the path they looked at."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACDC = Path(os.environ.get("MTSSL_ACDC", ROOT.parent / "shared" / "data" / "acdc"))


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """The built-in sample (2 labelled scans) prepared for training at the tiny profile's plan:
    (StudyData, shaped config), for tests that drive ``train_unit`` directly."""
    from napari_mtssl import api
    from napari_mtssl.training.data.slices import StudyData
    from napari_mtssl.training.planning.plan import fingerprint
    from napari_mtssl.training.planning.planner import make_plan

    ws = api.create_workspace(tmp_path_factory.mktemp("tiny") / "ws", source="sample", labelled=2)
    cfg = api.make_config("tiny", device="cpu")
    plan = make_plan(fingerprint(ws), cfg, "baseline", allocate_steps=False)
    return StudyData.from_workspace(ws, plan.preprocessing(), plan.patch), plan.apply(cfg)
