"""Which slices a person should correct next: ranking strategies over unlabelled slices.

A strategy gives every candidate slice (a slice of a training scan that nobody annotated or
corrected) a score; the ``k`` highest are proposed, each with the reason it was chosen. The
strategies, measured against each other by ``napari-mtssl simulate`` (docs/benchmarks.md):

* ``disagreement``: the teachers' mutual information (the BALD score, see
  :func:`.inference.disagreement`), the mean over the slice's voxels.
* ``entropy``: the student's predictive entropy, the mean over the slice's voxels.
* ``random``: uniform among candidates.
* ``fg_random``: uniform among candidates that show the structures (in a simulation: the
  reference mask has foreground there; in the product: the student segments something there).
  A person who picks slices "at random" skips the ones without anatomy; nnActive (2025) found
  this baseline hard to beat.
* ``oracle``: the number of voxels the student gets wrong (needs the reference mask; an upper
  bound, only for simulations).

Pure numpy: the probabilities come from :func:`.inference.predict_scan`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "STRATEGIES",
    "NEEDS",
    "Candidate",
    "entropy_scores",
    "disagreement_scores",
    "error_scores",
    "foreground_slices",
    "rank",
    "describe",
]

STRATEGIES = ("disagreement", "entropy", "random", "fg_random", "oracle")
# The models each strategy predicts with: "teachers" (probabilities), "student" (labels and
# probabilities; fg_random takes its foreground, unless a simulation has the true masks).
NEEDS: dict[str, tuple[str, ...]] = {
    "disagreement": ("teachers",),
    "entropy": ("student",),
    "random": (),
    "fg_random": ("student",),
    "oracle": ("student",),
}
DESCRIPTION = {
    "disagreement": "where the teachers disagree most (mutual information)",
    "entropy": "where the student is least sure (entropy)",
    "random": "at random",
    "fg_random": "at random among slices that show the structures",
    "oracle": "where the student is most wrong (needs the true masks: simulations only)",
}


@dataclass(frozen=True)
class Candidate:
    """A proposed slice: the scan, the slice index, its score and why it was chosen."""

    scan: str
    z: int
    score: float
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def describe(strategy: str) -> str:
    check_strategy(strategy)
    return DESCRIPTION[strategy]


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return strategy


def _per_slice_mean(v: np.ndarray) -> np.ndarray:
    return v.reshape(v.shape[0], -1).mean(1).astype(np.float64)


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """Per-slice mean predictive entropy (nats) of ``probs`` ``(C, z, y, x)``."""
    p = np.clip(np.asarray(probs, dtype=np.float32), 1e-8, 1.0)
    return _per_slice_mean(-(p * np.log(p)).sum(0))


def disagreement_scores(teacher_probs: Sequence[np.ndarray]) -> np.ndarray:
    """Per-slice mean mutual information between the teachers (nats); zeros for one teacher."""
    # imported here, when needed: it loads torch
    from napari_mtssl.training.prediction.inference import disagreement

    if len(teacher_probs) < 2:
        return np.zeros(np.asarray(teacher_probs[0]).shape[1], np.float64)
    return _per_slice_mean(disagreement(teacher_probs))


def error_scores(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-slice number of voxels where ``pred`` and ``truth`` differ."""
    return (np.asarray(pred) != np.asarray(truth)).reshape(len(pred), -1).sum(1).astype(np.float64)


def foreground_slices(mask: np.ndarray) -> np.ndarray:
    """Per-slice bool: the mask has any foreground voxel there."""
    return (np.asarray(mask) > 0).reshape(len(mask), -1).any(1)


def _reason(strategy: str, score: float, place: int, total: int) -> str:
    of = f"rank {place} of {total} candidate slices"
    if strategy == "disagreement":
        return f"teachers disagree: {score:.4f} nats per voxel ({of})"
    if strategy == "entropy":
        return f"student unsure: entropy {score:.4f} nats per voxel ({of})"
    if strategy == "oracle":
        return f"student wrong on {int(score)} voxels ({of})"
    if strategy == "fg_random":
        return f"at random among {total} slices showing the structures"
    return f"at random among {total} unlabelled slices"


def rank(
    strategy: str,
    candidates: Mapping[str, Iterable[int]],
    k: int,
    *,
    scores: Mapping[str, np.ndarray] | None = None,
    foreground: Mapping[str, np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
) -> list[Candidate]:
    """The ``k`` best candidate slices for ``strategy``, best first.

    ``candidates``: scan id -> slice indices that may be proposed (unlabelled ones).
    ``scores``: scan id -> per-slice score (higher: more worth correcting) for the scoring
    strategies; ``foreground``: scan id -> per-slice bool for ``fg_random``. Fewer than ``k``
    candidates: all of them (the caller says so). Ties and random strategies use ``rng``.
    """
    check_strategy(strategy)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    rng = rng if rng is not None else np.random.default_rng(0)
    pool = [(sid, int(z)) for sid in sorted(candidates) for z in sorted(set(candidates[sid]))]
    if strategy == "fg_random":
        if foreground is None:
            raise ValueError("fg_random needs the per-slice foreground of every candidate scan")
        pool = [(s, z) for s, z in pool if bool(np.asarray(foreground[s])[z])]
    if strategy in ("random", "fg_random"):
        values = rng.random(len(pool))
    else:
        if scores is None:
            raise ValueError(f"{strategy} needs per-slice scores of every candidate scan")
        values = np.array([float(np.asarray(scores[s])[z]) for s, z in pool], np.float64)
    tie = rng.random(len(pool))
    order = np.lexsort((tie, -values)) if len(pool) else np.array([], int)
    out = []
    for place, i in enumerate(order[:k], start=1):
        sid, z = pool[int(i)]
        v = float(values[int(i)])
        out.append(Candidate(sid, z, v, _reason(strategy, v, place, len(pool))))
    return out
