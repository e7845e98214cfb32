"""Stage 2 beyond the paper (METHOD.md): self-training on the unlabelled slices with the
teachers' ensemble as the pseudo-labeller, optionally through bidirectional copy-paste.

Each step draws ``B/2`` labelled windows (ground truth) and ``B/2`` unlabelled windows (another
split with ``labelled_share``; the windows beyond the pairs are trained whole) with the
ensemble's stored probabilities (:mod:`..soft_labels`), both with the usual geometric
augmentation (the stored map warped with its image). For a share ``mix`` of the pairs, a box of
``box`` x the patch side is pasted from the labelled window into its unlabelled partner and the
other way round (BCP, Bai et al. 2023); the other pairs stay whole. Every image gets a strong
intensity perturbation (UniMatch's strong view, Yang et al. 2023): the targets come from the
clean slices, the student learns them on the perturbed (and mixed) view. Targets: ground truth
where the labelled window lies, at full weight; the ensemble's hard label where the unlabelled
one lies, only where its confidence is at least ``confidence``, at weight ``unlabelled_weight``.
With ``pseudo_lcc`` the pseudo-labels keep only the largest connected foreground component of
each window (the evaluation's post-processing; BCP does the same to its pseudo-labels on ACDC).
So every step is ``B`` images through the network, as a baseline step is.

With ``refresh`` > 0 the student's own moving average (what the unit keeps, see
``trainer._Average``) joins the pseudo-labeller: its probabilities on the clean unlabelled window
are blended with the ensemble's, with a weight that rises from 0 to ``refresh`` over the first
``refresh_ramp`` of the steps (Mean Teacher, Tarvainen & Valpola 2017; BCP's teacher is the same
moving average). A warm-started student outgrows an ensemble of short stage-1 models within
the first half of its steps; targets that stay fixed then hold it back. This costs one forward
pass without gradients over the ``B/2`` unlabelled windows per step.

With ``online`` (the ensemble is the student's own start, e.g. the run's baseline when no
teacher was kept) nothing is stored: the moving average, which starts as that same model, labels
every unlabelled window from the first step, drawn from all unlabelled slices (not placed on
the anatomy: no map says where it is). Storing the maps would repeat the same predictions, at
about 75 s of a 20-minute budget on ACDC.

With no unlabelled slice in the study, both partners are labelled windows (ground truth on both
sides; with ``mix`` > 0, plain CutMix between them).
"""

from __future__ import annotations

import numpy as np
import torch

from napari_mtssl.training.data.slices import augment_with_soft, no_labelled_data_message
from napari_mtssl.training.loop.terms.base import StepInputs, Term
from napari_mtssl.training.prediction.inference import class_probs
from napari_mtssl.training.prediction.postprocess import largest_component


def _boxes(b: int, side: int, frac: float, gen: torch.Generator) -> torch.Tensor:
    """(b, 1, side, side) float masks, 1 inside a random square of ``frac * side``."""
    k = max(1, min(side, int(round(frac * side))))
    y0 = torch.randint(0, side - k + 1, (b,), generator=gen)
    x0 = torch.randint(0, side - k + 1, (b,), generator=gen)
    r = torch.arange(side)
    in_y = (r[None, :] >= y0[:, None]) & (r[None, :] < (y0 + k)[:, None])
    in_x = (r[None, :] >= x0[:, None]) & (r[None, :] < (x0 + k)[:, None])
    return (in_y[:, :, None] & in_x[:, None, :]).float()[:, None]


def strong_intensity(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The strong view's intensity perturbation, per image: contrast and brightness (p 0.8),
    gamma on the image's own range (p 0.5), Gaussian noise (p 0.5)."""
    b, dev = x.shape[0], x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen).to(dev)

    one = (b, 1, 1, 1)
    sel = rand(*one) < 0.8
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 0.6 + 0.8 * rand(*one)
    bright = (rand(*one) * 2 - 1) * 0.3
    x = torch.where(sel, (x - mean) * contrast + mean + bright, x)
    sel = rand(*one) < 0.5
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    span = (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-6)
    gamma = torch.exp((rand(*one) * 2 - 1) * 0.7)
    x = torch.where(sel, ((x - lo) / span).clamp(0, 1) ** gamma * span + lo, x)
    sel = rand(*one) < 0.5
    noise = torch.randn(x.shape, generator=gen).to(dev) * (0.1 * rand(*one))
    return torch.where(sel, x + noise, x)


def masked_seg_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor):
    """Cross-entropy + soft Dice with a per-pixel weight (0: ignored), for one channel
    (sigmoid) or several (softmax). ``target`` (B, H, W) int64, ``weight`` (B, H, W)."""
    p = class_probs(logits.float())  # (B, C, H, W)
    c = p.shape[1]
    onehot = torch.nn.functional.one_hot(target.clamp(0, c - 1), c).permute(0, 3, 1, 2).float()
    w = weight[:, None].float()
    total_w = w.sum().clamp_min(1.0)
    ce = -(onehot * p.clamp_min(1e-7).log() * w).sum() / total_w
    dims = (0, 2, 3)
    inter = (p * onehot * w).sum(dims)
    denom = (p * w).sum(dims) + (onehot * w).sum(dims)
    dice = 1 - ((2 * inter + 1e-5) / (denom + 1e-5)).mean()
    return ce + dice


def largest_component_2d(labels: torch.Tensor) -> torch.Tensor:
    """(B, H, W) label maps with the foreground outside each image's largest connected
    component set to background: the evaluation's post-processing, applied to pseudo-labels
    (a stray blob of the pseudo-labeller is taught as background, not as anatomy)."""
    arr = labels.cpu().numpy()
    out = np.stack([largest_component(a) for a in arr])
    return torch.from_numpy(out).to(labels.device)


def own_probs(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """``model``'s class probabilities on ``image``, in evaluation mode and without gradients
    (the moving average of the student as a pseudo-labeller); its mode is left as it was."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return class_probs(model(image))
    finally:
        model.train(was)


class CopyPasteSelfTraining(Term):
    """Ground truth and the ensemble's confident pseudo-labels on mixed, strongly perturbed
    views (see the module docstring)."""

    name = "semi"

    def __init__(
        self,
        weight: float = 1.0,
        confidence: float = 0.9,
        unlabelled_weight: float = 0.5,
        box: float = 2 / 3,
        fg_oversample: float = 0.33,
        refresh: float = 0.0,
        refresh_ramp: float = 0.5,
        mix: float = 1.0,
        pseudo_lcc: bool = False,
        online: bool = False,
        labelled_share: float = 0.5,
    ):
        super().__init__(weight)
        self.online = bool(online)
        self.labelled_share = float(labelled_share)
        self.mix = float(mix)
        self.pseudo_lcc = bool(pseudo_lcc)
        self.refresh = float(refresh)
        self.refresh_ramp = float(refresh_ramp)
        self.fg_oversample = float(fg_oversample)
        self.confidence = float(confidence)
        self.unlabelled_weight = float(unlabelled_weight)
        self.box = float(box)

    def streams(self, study, batch_size, use_unlabelled):
        lab = study.labelled_slices()
        if not lab:
            raise ValueError(no_labelled_data_message())
        # unlabelled slices of the scans whose ensemble maps are stored (soft_labels.py), or
        # every unlabelled slice when the moving average labels them (online)
        unl = [
            (i, z)
            for i, z in study.unlabelled_slices()
            if self.online or study.train[i].soft is not None
        ]
        n_lab, n_unl = self.split(batch_size)
        fg = self.fg_oversample

        def labelled(step, rng):
            return study.seg_batch(lab, n_lab, rng, fg)

        def unlabelled(step, rng):
            if not unl:  # every slice labelled: labelled windows, with their labels
                return study.seg_batch(lab, n_unl, rng, fg)
            if self.online:
                batch = study.seg_batch(unl, n_unl, rng)
            else:
                batch = study.seg_batch(unl, n_unl, rng, fg, soft=True, fg_from="soft")
            batch.pop("label", None)  # a partly labelled scan's unlabelled slice: no truth here
            return batch

        return {"semi_l": (20, labelled), "semi_u": (21, unlabelled)}

    def split(self, batch_size: int) -> tuple[int, int]:
        """How many of a step's ``batch_size`` windows are labelled and how many unlabelled
        (``labelled_share`` of them labelled; at least one of each)."""
        b = max(2, int(batch_size))
        n_lab = min(b - 1, max(1, int(round(b * self.labelled_share))))
        return n_lab, b - n_lab

    def refresh_weight(self, progress: float) -> float:
        """The moving average's weight in the pseudo-labels at ``progress`` (0..1 of the steps):
        rising linearly from 0 to ``refresh`` over the first ``refresh_ramp`` of the unit."""
        if self.refresh <= 0:
            return 0.0
        return self.refresh * min(1.0, max(0.0, progress) / self.refresh_ramp)

    def _refreshed(self, soft: torch.Tensor, image: torch.Tensor, x: StepInputs) -> torch.Tensor:
        """The ensemble's probabilities blended with the student's moving average's on the same
        clean, weakly augmented window (Mean Teacher): the pseudo-labels improve with the
        student, while the ensemble keeps a say until the ramp ends."""
        w = self.refresh_weight(x.progress)
        if w <= 0 or x.average is None:
            return soft
        return (1 - w) * soft + w * own_probs(x.average, image).to(soft.dtype)

    def _pseudo_probs(self, bu: dict, x: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented unlabelled windows and their class probabilities: the stored maps,
        warped with them and refreshed by the moving average; online, the average alone."""
        cfg, gen = x.cfg.data, x.gen
        if "soft" in bu:
            soft = bu["soft"].float() / 255.0
            xu, _, su = augment_with_soft(bu["image"], None, soft, cfg, gen)
            return xu, self._refreshed(su, xu, x)
        if x.average is None:
            raise ValueError("stage 2 online needs the moving average (stage2.ema > 0)")
        xu, _, _ = augment_with_soft(bu["image"], None, None, cfg, gen)
        return xu, own_probs(x.average, xu).float()

    def loss(self, x: StepInputs) -> torch.Tensor:
        cfg, gen = x.cfg.data, x.gen
        bl, bu = x.batch("semi_l"), x.batch("semi_u")
        xl, yl, _ = augment_with_soft(bl["image"], bl["label"], None, cfg, gen)
        if "label" not in bu:  # unlabelled windows: the pseudo-labeller's probabilities
            xu, su = self._pseudo_probs(bu, x)
            conf, pseudo = su.max(1)
            if self.pseudo_lcc:
                pseudo = largest_component_2d(pseudo)
            trust = (conf >= self.confidence).float() * self.unlabelled_weight
        else:  # every slice labelled: CutMix between labelled windows
            xu, pseudo, _ = augment_with_soft(bu["image"], bu["label"], None, cfg, gen)
            trust = torch.ones(pseudo.shape, device=xu.device)
        # pairs of a labelled and an unlabelled window (mixed into each other for a share
        # ``mix``); the windows of the larger side beyond the pairs are trained whole
        n = min(xl.shape[0], xu.shape[0])
        rest_x = torch.cat([xl[n:], xu[n:]])
        rest_y = torch.cat([yl[n:], pseudo[n:]])
        rest_w = torch.cat([trust.new_ones(yl[n:].shape), trust[n:]])
        xl, yl, xu, pseudo, trust = xl[:n], yl[:n], xu[:n], pseudo[:n], trust[:n]
        m = _boxes(n, xl.shape[-1], self.box, gen)
        if self.mix < 1:  # the other pairs stay whole: each window with its own target
            m = m * (torch.rand(n, generator=gen) < self.mix).float()[:, None, None, None]
        m = m.to(xl.device)
        inside = m[:, 0] > 0.5
        ones = torch.ones_like(trust)
        mixed = torch.cat([xu * (1 - m) + xl * m, xl * (1 - m) + xu * m, rest_x])
        target = torch.cat(
            [torch.where(inside, yl, pseudo), torch.where(inside, pseudo, yl), rest_y]
        )
        weight = torch.cat(
            [torch.where(inside, ones, trust), torch.where(inside, trust, ones), rest_w]
        )
        logits = x.net(strong_intensity(mixed, gen))
        return masked_seg_loss(logits, target, weight)
