"""The loss terms a training unit is made of, and their registry.

A new term (a stage-2 method, a new kind of supervision) is one file here and one line in
``TERMS``; :func:`build_term` is how stages and unit specs make them.
"""

from __future__ import annotations

import difflib
from typing import Any

from napari_mtssl.training.loop.terms.base import SegForward, StepInputs, Term
from napari_mtssl.training.loop.terms.distil import EnsembleDistillation
from napari_mtssl.training.loop.terms.feature import FeatureDistillation
from napari_mtssl.training.loop.terms.seg import Segmentation
from napari_mtssl.training.loop.terms.semi import CopyPasteSelfTraining
from napari_mtssl.training.loop.terms.task import AuxiliaryTask

__all__ = ["TERMS", "Term", "SegForward", "StepInputs", "build_term"]

TERMS: dict[str, type[Term]] = {
    "seg": Segmentation,
    "task": AuxiliaryTask,
    "kd": EnsembleDistillation,
    "feature_kd": FeatureDistillation,
    "semi": CopyPasteSelfTraining,
}


def build_term(name: str, **kwargs: Any) -> Term:
    """The term registered as ``name``; ValueError listing the valid names otherwise."""
    if name not in TERMS:
        close = difflib.get_close_matches(str(name), list(TERMS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown loss term {name!r}.{hint} Valid terms: {', '.join(TERMS)}")
    return TERMS[name](**kwargs)
