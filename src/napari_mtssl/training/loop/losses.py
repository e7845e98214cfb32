"""Segmentation and distillation losses (the terms of :mod:`.terms` combine them).

One code path for binary and multi-class segmentation: a network with one output channel is
binary (sigmoid), more channels is multi-class (softmax). :func:`~napari_mtssl.training.prediction.inference.class_probs` turns either into
class probabilities ``(B, C, H, W)`` with ``C = num_classes`` (binary: ``[1 - p, p]``), so the
distillation target, the ensemble and the metrics never need to know which head produced them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from napari_mtssl.training.prediction.inference import class_probs

_EPS = 1e-7


class SegLoss(torch.nn.Module):
    """Dice + cross-entropy (MONAI ``DiceCELoss``); sigmoid + BCE when there is one channel.

    Dice is computed over the whole batch (``batch=True``) so that a slice without a class does
    not produce a 0/0 Dice term for that class.
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0):
        super().__init__()
        self.multi = DiceCELoss(
            softmax=True,
            to_onehot_y=True,
            batch=True,
            lambda_dice=lambda_dice,
            lambda_ce=lambda_ce,
        )
        self.binary = DiceCELoss(
            sigmoid=True, batch=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, K, H, W); ``target`` (B, H, W) integer classes."""
        logits = logits.float()
        t = target.long().unsqueeze(1)
        if logits.shape[1] == 1:
            return self.binary(logits, (t > 0).float())
        return self.multi(logits, t)


def soft_dice_loss(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """1 - mean over classes of 2 sum(p q) / (sum p + sum q), sums over batch and pixels.

    ``p``, ``q`` are probabilities ``(B, C, H, W)``; the soft target ``q`` is not one-hot.
    """
    dims = (0, 2, 3)
    inter = (p * q).sum(dims)
    denom = p.sum(dims) + q.sum(dims)
    return 1 - ((2 * inter + eps) / (denom + eps)).mean()


def kl_to_target(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float):
    """KL(target || student) at temperature T, scaled by T^2 (Hinton et al.), mean per pixel.

    ``target_probs`` must already be at temperature T.
    """
    ps = class_probs(student_logits, temperature).clamp_min(_EPS)
    q = target_probs.float().clamp_min(_EPS)
    kl = (q * (q.log() - ps.log())).sum(1)  # (B, H, W)
    return kl.mean() * temperature**2


def kd_loss(
    student_logits: torch.Tensor,
    ensemble_probs: torch.Tensor,
    temperature: float = 1.0,
    ensemble_probs_t: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """l_kd = soft Dice(student, ensemble) + T^2 * KL(ensemble_T || student_T).

    ``ensemble_probs``: teachers' mean class probabilities at T = 1 ``(B, C, H, W)``, used by the
    Dice term; ``ensemble_probs_t``: their mean at temperature T for the KL term (defaults to
    ``ensemble_probs``, which is right when T == 1).
    """
    if ensemble_probs_t is None:
        ensemble_probs_t = ensemble_probs
    dice = soft_dice_loss(class_probs(student_logits), ensemble_probs.float())
    kl = kl_to_target(student_logits, ensemble_probs_t, temperature)
    return {"loss": dice + kl, "kd_dice": dice, "kd_kl": kl}


def feature_nce_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, tau: float = 0.1):
    """InfoNCE between pooled student and teacher features (Biswas 2024, option of stage 2).

    Positive: the same image's teacher feature; negatives: the other images of the batch.
    Inputs ``(B, D)`` (already projected to the same width).
    """
    s = F.normalize(student_feat.float(), dim=1)
    t = F.normalize(teacher_feat.float(), dim=1)
    logits = s @ t.T / tau
    return F.cross_entropy(logits, torch.arange(len(s), device=s.device))
