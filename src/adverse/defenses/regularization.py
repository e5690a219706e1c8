"""Regularization defenses: input-gradient regularization (double backpropagation) and Lipschitz-margin training.

Both are training losses used through :func:`regularized_training` (the same epoch loop, early stopping and pass
counting as :func:`adverse.defenses.adversarial_training`), or step by step through :func:`regularized_step`.
``method="standard"`` trains on plain cross-entropy, for the weight-decay and dropout baselines
(``weight_decay=...``; a model with dropout layers) that ``docs/defenses.md`` compares on the same task.

References
----------
Drucker & LeCun, "Improving generalization performance using double backpropagation", IEEE TNN 1992. Ross &
Doshi-Velez, "Improving the Adversarial Robustness and Interpretability of Deep Neural Networks by Regularizing
their Input Gradients", AAAI 2018. Tsuzuku, Sato & Sugiyama, "Lipschitz-Margin Training: Scalable Certification of
Perturbation Invariance for Deep Neural Networks", NeurIPS 2018.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..errors import InputError, ModelError
from ..threat import check_norm, dual_norm, lp_norm
from .training import (
    StepResult,
    TrainingResult,
    check_dataset,
    optimizer_step,
    robust_accuracy_on,
    train_loop,
)

Tensor = torch.Tensor
METHODS = ("input-gradient", "lipschitz-margin", "standard")
_ONE_LIPSCHITZ = (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity, nn.Sequential)


def input_gradient_loss(model: nn.Module, x: Tensor, y: Tensor, lam: float, norm: str = "l2") -> tuple[Tensor, int, int]:
    """Double backpropagation: ``L(f(x), y) + λ · mean_i ‖∇ₓ L(f(xᵢ), yᵢ)‖_q²``.

    ``norm`` is the threat model's norm and ``q`` its dual (L∞ → L1, L2 → L2): to first order the loss can
    rise by at most ``ε ‖∇ₓ L‖_q`` inside the ε-ball, so this penalty targets the attack one defends against.
    The gradient is taken with ``create_graph=True`` so the penalty trains the weights.

    Returns
    -------
    ``(loss, forwards, backwards)`` per sample: one forward, two backward passes (the input gradient and the
    weight gradient through it).

    References
    ----------
    Drucker & LeCun 1992; Ross & Doshi-Velez, AAAI 2018.
    """
    xr = x.detach().requires_grad_(True)
    per_sample = F.cross_entropy(model(xr), y, reduction="none")
    (g,) = torch.autograd.grad(per_sample.sum(), xr, create_graph=True)
    penalty = lp_norm(g, dual_norm(norm)).pow(2).mean()
    n = x.shape[0]
    return per_sample.mean() + lam * penalty, n, 2 * n


class LipschitzBound(nn.Module):
    """An upper bound on the global L2 Lipschitz constant of a feed-forward network: the product of the spectral
    norms of its Linear and Conv2d layers (ReLU, max-pooling with non-overlapping windows, flattening and dropout
    in eval mode are 1-Lipschitz), each estimated by power iteration on the layer's linear operator with a
    persistent vector, differentiable in the weights (Tsuzuku et al., Algorithm 2).

    Parameters
    ----------
    model : a network built from Linear, Conv2d, ReLU, MaxPool2d, Flatten, Dropout and Sequential, applied in
        module order; anything else raises :class:`ModelError`.
    input_shape : the shape of one input, e.g. (1, 8, 8).
    iterations : power iterations per call (one per training step suffices, the vectors persist).
    seed : seeds the starting vectors.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], iterations: int = 1, seed: int = 0) -> None:
        super().__init__()
        for name, m in model.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)) or m is model:
                continue
            if not isinstance(m, _ONE_LIPSCHITZ) or (isinstance(m, nn.MaxPool2d) and m.stride != m.kernel_size):
                raise ModelError(f"layer {name!r} ({type(m).__name__}) is not supported by the Lipschitz bound; use "
                                 "Linear, Conv2d, ReLU, MaxPool2d (stride = kernel), Flatten, Dropout and Sequential")
        shapes: dict[int, tuple[int, ...]] = {}
        hooks = [m.register_forward_hook(lambda mod, inp, out: shapes.__setitem__(id(mod), tuple(inp[0].shape[1:])))
                 for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        try:
            with torch.no_grad():
                p = next(model.parameters())
                model(torch.zeros((1, *input_shape), dtype=p.dtype, device=p.device))
        finally:
            for h in hooks:
                h.remove()
        g = torch.Generator().manual_seed(int(seed))
        self.ops = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        if not self.ops:
            raise ModelError("the model has no Linear or Conv2d layer to bound")
        self.iterations = int(iterations)
        for i, m in enumerate(self.ops):
            u = torch.randn((1, *shapes[id(m)]), generator=g).to(m.weight)
            self.register_buffer(f"u{i}", u / u.norm())

    @staticmethod
    def _apply(m: nn.Module, u: Tensor) -> Tensor:
        if isinstance(m, nn.Linear):
            return F.linear(u, m.weight)
        return F.conv2d(u, m.weight, None, m.stride, m.padding, m.dilation, m.groups)

    @staticmethod
    def _apply_t(m: nn.Module, v: Tensor, like: Tensor) -> Tensor:
        if isinstance(m, nn.Linear):
            return v @ m.weight
        (out,) = torch.autograd.grad(LipschitzBound._apply(m, like), like, v)  # the transposed convolution, exact
        return out

    def forward(self) -> Tensor:
        """The bound ``Π_l σ_l`` (a scalar with a graph to the weights); advances the power iterations."""
        total = None
        for i, m in enumerate(self.ops):
            u = getattr(self, f"u{i}")
            with torch.enable_grad():
                for _ in range(self.iterations):
                    like = torch.zeros_like(u, requires_grad=True)
                    w = self._apply_t(m, self._apply(m, u).detach(), like)
                    u = (w / w.norm().clamp_min(1e-12)).detach()
            getattr(self, f"u{i}").copy_(u)
            sigma = self._apply(m, u).norm()
            total = sigma if total is None else total * sigma
        return total


def lipschitz_margin_loss(model: nn.Module, x: Tensor, y: Tensor, eps: float, bound: LipschitzBound) -> tuple[Tensor, int, int]:
    """Lipschitz-margin training: the cross-entropy of logits whose wrong classes are raised by ``√2 · ε · L``,
    ``L`` the network's Lipschitz bound; a margin above ``√2 · ε · L`` certifies the prediction in the L2 ball
    of radius ε (:func:`certified_radius`).

    References
    ----------
    Tsuzuku, Sato & Sugiyama, NeurIPS 2018.
    """
    z = model(x)
    lip = bound()
    onehot = F.one_hot(y, z.shape[1]).to(z.dtype)
    loss = F.cross_entropy(z + math.sqrt(2.0) * eps * lip * (1 - onehot), y)
    n = x.shape[0]
    return loss, n, n


def certified_radius(model: nn.Module, x: Tensor, bound: LipschitzBound, iterations: int = 50) -> Tensor:
    """Per-sample L2 radius within which the prediction cannot change: ``(z_top − z_second) / (√2 · L)`` with
    ``L`` the Lipschitz bound after ``iterations`` more power iterations (Tsuzuku et al., Proposition 1).
    Leaves the model's modes as found."""
    from ..models import attack_mode

    saved = bound.iterations
    try:
        bound.iterations = iterations
        with attack_mode(model), torch.no_grad():
            z = model(x)
            lip = bound()
    finally:
        bound.iterations = saved
    top2 = z.topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]) / (math.sqrt(2.0) * lip)


def regularized_step(model: nn.Module, batch: tuple[Tensor, Tensor], optimizer: torch.optim.Optimizer, *,
                     method: str = "input-gradient", lam: float = 1.0, eps: float = 0.1, norm: str = "l2",
                     bound: LipschitzBound | None = None) -> StepResult:
    """One optimizer step with a regularized loss (see :func:`regularized_training` for the arguments); the
    model is in train mode for the step and its modes are restored afterwards."""
    x, y = batch
    if method == "input-gradient":
        def loss_of():
            loss, fw, bw = input_gradient_loss(model, x, y, lam, norm)
            return loss, x, fw, bw
    elif method == "lipschitz-margin":
        if bound is None:
            raise InputError("lipschitz-margin needs bound=LipschitzBound(model, input_shape)")

        def loss_of():
            loss, fw, bw = lipschitz_margin_loss(model, x, y, eps, bound)
            return loss, x, fw, bw
    elif method == "standard":
        def loss_of():
            return F.cross_entropy(model(x), y), x, x.shape[0], x.shape[0]
    else:
        raise InputError(f"unknown regularization method {method!r}; use one of {', '.join(METHODS)}")
    return optimizer_step(model, optimizer, loss_of)


def regularized_training(
    model: nn.Module,
    data: Dataset,
    method: str = "input-gradient",
    *,
    lam: float = 1.0,
    eps: float = 0.1,
    norm: str = "linf",
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: torch.optim.Optimizer | None = None,
    validation: Dataset | None = None,
    val_eps: float | None = None,
    val_steps: int = 10,
    patience: int | None = None,
    schedule: str = "constant",
    bounds: tuple[float, float] | None = None,
    seed: int = 0,
) -> TrainingResult:
    """Train ``model`` (in place) with a regularized loss; deterministic for a given ``seed``.

    Parameters
    ----------
    method : "input-gradient" (double backpropagation, penalty ``lam · ‖∇ₓL‖_q²`` with ``q`` the dual of
        ``norm``), "lipschitz-margin" (Tsuzuku et al.; certifies L2 radius ``eps``, so ``norm`` must be "l2")
        or "standard" (plain cross-entropy: with ``weight_decay`` or a dropout model, the baselines).
    lam : the weight of the input-gradient penalty.
    eps : the Lipschitz-margin radius (L2, input units).
    validation, val_eps, val_steps, patience : early stopping on PGD robust accuracy at ``val_eps`` in ``norm``.
    Others as in :func:`adverse.defenses.adversarial_training`.

    Returns
    -------
    TrainingResult; for "lipschitz-margin" ``params["bound"]`` holds the :class:`LipschitzBound` (for
    :func:`certified_radius`).
    """
    if method not in METHODS:
        raise InputError(f"unknown regularization method {method!r}; use one of {', '.join(METHODS)}")
    norm = check_norm(norm)
    x, y, b = check_dataset(data, bounds)
    if not (isinstance(lam, (int, float)) and lam >= 0):
        raise InputError(f"lam must be a number ≥ 0, got {lam!r}")
    bound = None
    if method == "lipschitz-margin":
        if norm != "l2":
            raise InputError("the Lipschitz margin certifies an L2 ball; pass norm='l2'")
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise InputError(f"eps must be a number > 0, got {eps!r}")
        bound = LipschitzBound(model, tuple(x.shape[1:]), seed=seed)
    evaluate = None
    if validation is not None:
        if val_eps is None:
            raise InputError("early stopping needs val_eps, the budget of the validation attack")
        xv, yv, _ = check_dataset(validation, b)
        evaluate = robust_accuracy_on(model, xv, yv, eps=val_eps, norm=norm, steps=val_steps, bounds=b, seed=seed)

    def step(xb: Tensor, yb: Tensor, opt: torch.optim.Optimizer, g: torch.Generator) -> StepResult:
        return regularized_step(model, (xb, yb), opt, method=method, lam=lam, eps=eps, norm=norm, bound=bound)

    params: dict[str, Any] = {"lam": lam, "eps": eps, "norm": norm}
    res = train_loop(model, x, y, step, name=method, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                     lr=lr, weight_decay=weight_decay, seed=seed, evaluate=evaluate, patience=patience,
                     schedule=schedule, params=params)
    if bound is not None:
        res.params["bound"] = bound
    return res


__all__ = [
    "LipschitzBound",
    "certified_radius",
    "input_gradient_loss",
    "lipschitz_margin_loss",
    "regularized_step",
    "regularized_training",
]
