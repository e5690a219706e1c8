"""DeepFool, in L2 and L∞: repeated steps to the nearest boundary of the locally linearized classifier."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..results import AttackResult
from ..threat import batch_view, dual_norm, lp_norm
from ..validation import validated
from ._core import is_adversarial, setup

Tensor = torch.Tensor


@validated
def deepfool(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "l2",
    steps: int = 50,
    overshoot: float = 0.02,
    candidates: int = 10,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | None = 0,
) -> AttackResult:
    """DeepFool: walk to the nearest decision boundary of the linearized classifier until the label changes.

    At iterate ``x_i``, for every candidate class ``k ≠ y`` (Moosavi-Dezfooli et al. 2016, Algorithms 1-2):
    ``f'_k = z_k(x_i) − z_y(x_i)`` and ``w'_k = ∇f'_k(x_i)``; the nearest linearized boundary is
    ``l̂ = argmin_k |f'_k| / ‖w'_k‖_q`` (q = 2 for L2, q = 1 for L∞), and the step to it is
    ``r_i = |f'_l̂| / ‖w'_l̂‖₂² · w'_l̂`` (L2) or ``r_i = |f'_l̂| / ‖w'_l̂‖₁ · sign(w'_l̂)`` (L∞), lengthened by 1e-4
    as in the authors' code so the boundary is crossed rather than touched. The steps add up to ``r̂ = Σ r_i``
    and the iterate is ``x_{i+1} = clip(x + (1 + overshoot) r̂)`` (the paper's overshoot, applied to the total
    perturbation). A sample stops as soon as it is misclassified; it is untargeted only.

    Parameters
    ----------
    model : torch.nn.Module
        Returns logits for inputs inside ``bounds``.
    x, y : Tensor
        Inputs of shape (n, ...) inside ``bounds`` and their integer labels of shape (n,).
    norm : {"l2", "linf"}
        The norm whose linearized distance is minimized.
    steps : int
        Maximum number of iterations.
    overshoot : float
        η: the total perturbation is scaled by ``1 + η``.
    candidates : int
        Number of classes considered, the true class included (as in Foolbox): the true class and the
        ``candidates − 1`` other classes with the highest clean logits. Each iteration costs one forward and
        one backward pass per candidate.
    bounds : (float, float)
        The valid input range; iterates are clipped to it.
    seed : int or None
        Unused (DeepFool is deterministic); recorded in the result.

    Returns
    -------
    AttackResult
        ``eps`` is None; ``norms`` holds each sample's adversarial norm (0 where the clean input is already
        misclassified); use ``robust_accuracy_at(eps)`` for robust accuracy at any budget.

    References
    ----------
    Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool deep neural
    networks", CVPR 2016.
    """
    if steps < 1:
        raise InputError(f"steps must be ≥ 1, got {steps}")
    if overshoot < 0:
        raise InputError(f"overshoot must be ≥ 0, got {overshoot}")
    with setup(model, x, y, eps=None, norm=norm, bounds=bounds, seed=seed, norms=("l2", "linf")) as s:
        K = min(int(candidates), s.num_classes)
        if K < 2:
            raise InputError(f"candidates must be ≥ 2 (the true class and at least one other), got {candidates}")
        lo, hi = s.bounds
        q = dual_norm(s.norm)
        tr = s.tracker(minimize=True)
        # the K − 1 most likely other classes, by clean logit
        others = s.clean_logits.scatter(1, s.y.unsqueeze(1), float("-inf")).topk(K - 1, dim=1).indices
        idx = tr.active()
        x0, y0, ks = s.x[idx], s.y[idx], others[idx]
        r_hat = torch.zeros_like(x0)
        x_i = x0.clone()
        for i in range(steps + 1):
            if idx.numel() == 0:
                break
            if i == steps:  # the last iterate: a forward pass decides
                tr.update(idx, x_i, is_adversarial(s.model.logits(x_i), y0, None))
                break
            n = idx.numel()
            k_rep, y_rep = ks.reshape(-1), y0.repeat_interleave(K - 1)

            def f_prime(z: Tensor, k_rep: Tensor = k_rep, y_rep: Tensor = y_rep) -> Tensor:
                return z.gather(1, k_rep.unsqueeze(1)).squeeze(1) - z.gather(1, y_rep.unsqueeze(1)).squeeze(1)

            # f'_k and w'_k for all candidates at once: the batch repeated once per candidate class
            logits, f, w = s.model.value_and_grad(x_i.repeat_interleave(K - 1, dim=0), f_prime)
            is_adv = is_adversarial(logits[:: K - 1], y0, None)
            tr.update(idx, x_i, is_adv)
            keep = ~is_adv
            f, w = f.reshape(n, K - 1)[keep], w.reshape(n, K - 1, *x0.shape[1:])[keep]
            idx, x0, y0, ks, r_hat = idx[keep], x0[keep], y0[keep], ks[keep], r_hat[keep]
            if idx.numel() == 0:
                break

            w_norm = lp_norm(w.flatten(0, 1), q).reshape(f.shape).clamp_min(1e-12)
            distance = f.abs() / w_norm
            l_hat = distance.argmin(dim=1)
            rows = torch.arange(idx.numel(), device=idx.device)
            d_l, w_l = distance[rows, l_hat] + 1e-4, w[rows, l_hat]
            if s.norm == "l2":
                r_i = batch_view(d_l / w_norm[rows, l_hat], w_l) * w_l
            else:
                r_i = batch_view(d_l, w_l) * w_l.sign()
            r_hat = r_hat + r_i
            x_i = (x0 + (1 + overshoot) * r_hat).clamp(lo, hi)

        params = {"norm": s.norm, "steps": steps, "overshoot": overshoot, "candidates": K}
        return s.result(tr, "deepfool", params)
