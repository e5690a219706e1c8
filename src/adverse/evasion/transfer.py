"""Transfer attacks: craft on white-box surrogates, then measure what fools the attacked model.

The attacked model is only queried, once per sample on the clean input and once on the final adversarial input;
it may be a torch module, a :class:`~adverse.models.BlackBox`, a scikit-learn estimator or any callable that
returns scores or labels. The crafting is MI-FGSM on the surrogates' mean logits (Dong et al. 2018) with the
transferability tricks that compose with it:

* momentum ``μ`` (MI, Dong et al. 2018);
* input diversity (DI, Xie et al. 2019): with probability ``p`` the gradient is taken through a random
  resize-and-pad of the input;
* translation invariance (TI, Dong et al. 2019): the gradient is smoothed by a Gaussian kernel;
* variance tuning (VMI, Wang & He 2021): the momentum is fed ``ĝ + v`` where ``v`` is the mean gradient over
  ``N`` points drawn uniformly from a ``β·ε`` neighbourhood minus the gradient at the point itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, ModelError
from ..models import as_classifier
from ..threat import batch_view, clip_to_box, linf_box, project
from ..validation import validated
from ._core import Setup, ascent_direction, get_loss, is_adversarial, momentum_update, relative_scale, setup
from ._query import query_setup

Tensor = torch.Tensor


class _MeanLogits(nn.Module):
    """An ensemble of surrogates attacked through the mean of their logits (Dong et al. 2018, eq. 6)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(as_classifier(m) for m in models)  # each member's answer unwrapped to logits

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


def input_diversity(x: Tensor, p: float, resize_rate: float, generator: torch.Generator) -> Tensor:
    """DI's random transformation T(x; p) (Xie et al. 2019). Each sample, with probability ``p``, is resized
    (nearest neighbour) to a random side ``r`` and zero-padded at a random offset to a canvas of side ``H``:

    * ``resize_rate ≥ 1`` (the paper's form): ``r ∈ [h, H]`` with ``H = max(h + 1, ⌈h · resize_rate⌉)``, and the
      canvas is resized back to ``h × w`` (bilinear) so that models with a fixed input size accept it;
    * ``resize_rate < 1``: ``r ∈ [⌊h · resize_rate⌋, h]`` and ``H = h``: shrink and pad, no interpolation back.

    Differentiable in ``x``; one size and offset per call, as in the reference."""
    n, _, h, w = x.shape
    if resize_rate >= 1:
        big_h, big_w, small = max(h + 1, math.ceil(h * resize_rate)), max(w + 1, math.ceil(w * resize_rate)), h
    else:
        big_h, big_w, small = h, w, max(1, math.floor(h * resize_rate))
    r = int(torch.randint(small, big_h + 1, (1,), generator=generator))
    rw = max(1, min(big_w, round(r * w / h)))
    top = int(torch.randint(0, big_h - r + 1, (1,), generator=generator))
    left = int(torch.randint(0, big_w - rw + 1, (1,), generator=generator))
    canvas = F.pad(F.interpolate(x, size=(r, rw), mode="nearest"), (left, big_w - rw - left, top, big_h - r - top))
    if (big_h, big_w) != (h, w):
        canvas = F.interpolate(canvas, size=(h, w), mode="bilinear", align_corners=False)
    use = torch.rand(n, generator=generator, device=x.device) < p
    return torch.where(batch_view(use, x), canvas, x)


def gaussian_kernel(size: int, channels: int, like: Tensor, nsig: float = 3.0) -> Tensor:
    """TI's depthwise smoothing kernel: the outer product of a Gaussian sampled on ``[−nsig, nsig]`` at ``size``
    points, normalized to sum 1 (Dong et al. 2019), shaped ``(channels, 1, size, size)``."""
    t = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
    k1 = torch.exp(-0.5 * t**2)
    k = torch.outer(k1, k1)
    k = (k / k.sum()).to(dtype=like.dtype, device=like.device)
    return k.expand(channels, 1, size, size).contiguous()


def _check(steps: int, decay: float, p: float, resize_rate: float, kernel_size: int, vmi_samples: int,
           vmi_beta: float) -> None:
    if steps < 1:
        raise InputError(f"steps must be ≥ 1, got {steps}")
    if not decay >= 0:
        raise InputError(f"decay (momentum μ) must be ≥ 0, got {decay}")
    if not 0.0 <= p <= 1.0:
        raise InputError(f"diversity_prob must lie in [0, 1], got {p}")
    if not 0.0 < resize_rate <= 4.0:
        raise InputError(f"resize_rate must lie in (0, 4] (below 1 DI shrinks, above it enlarges), got {resize_rate}")
    if kernel_size < 0 or (kernel_size > 0 and kernel_size % 2 == 0):
        raise InputError(f"kernel_size must be 0 (no TI) or a positive odd integer, got {kernel_size}")
    if vmi_samples < 0 or not vmi_beta >= 0:
        raise InputError(f"vmi_samples must be ≥ 0 and vmi_beta ≥ 0, got {vmi_samples} and {vmi_beta}")


def _surrogate(surrogate: nn.Module | Sequence[nn.Module]) -> nn.Module:
    if isinstance(surrogate, nn.Module):
        return surrogate
    if isinstance(surrogate, (list, tuple)) and surrogate and all(isinstance(m, nn.Module) for m in surrogate):
        return surrogate[0] if len(surrogate) == 1 else _MeanLogits(surrogate)
    raise ModelError(
        "surrogate must be a torch.nn.Module returning logits, or a non-empty list of them (an ensemble); "
        "the surrogate is attacked with gradients, the attacked model only queried"
    )


def _craft(s: Setup, *, steps: int, alpha: float, decay: float, loss: str,
           transform: Callable[[Tensor], Tensor] | None,
           smooth: Callable[[Tensor], Tensor], vmi_samples: int, vmi_beta: float) -> Tensor:
    """MI-FGSM with variance tuning on the surrogate (Dong et al. 2018; Wang & He 2021), all ``steps`` run."""
    loss_fn = get_loss(loss, s.num_classes, s.target is not None)
    y, t = s.y, s.target

    def grad_at(z: Tensor) -> Tensor:
        return smooth(s.model.value_and_grad(z, lambda o: loss_fn(o, y, t), transform)[2])

    x, eps = s.x, s.eps
    eps_v = batch_view(eps, x)
    delta = torch.zeros_like(x)
    g = torch.zeros_like(x)
    v = torch.zeros_like(x)
    box = linf_box(x, eps, s.bounds) if s.norm == "linf" else None  # L∞ ∩ box is a fixed box: clipping projects
    scale = alpha * relative_scale(eps, x)
    for _ in range(steps):
        x_t = x + delta
        g_hat = grad_at(x_t)
        g = momentum_update(g, g_hat + v, decay)
        if vmi_samples:
            neighbours = torch.zeros_like(x)
            for _ in range(vmi_samples):
                r = (2 * torch.rand(x.shape, generator=s.generator, dtype=x.dtype, device=x.device) - 1)
                neighbours += grad_at(x_t + vmi_beta * eps_v * r)
            v = neighbours / vmi_samples - g_hat
        step = scale * ascent_direction(g, s.norm, x_t, s.bounds)
        delta = clip_to_box(delta + step, *box) if box is not None else project(delta + step, x, eps, s.norm, s.bounds)
    return (x + delta).detach()


@validated
def transfer(
    surrogate: nn.Module | Sequence[nn.Module],
    model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Tensor,
    norm: str = "linf",
    steps: int = 10,
    alpha: float | None = None,
    decay: float = 1.0,
    diversity_prob: float = 0.0,
    resize_rate: float = 1.1,
    kernel_size: int = 0,
    vmi_samples: int = 0,
    vmi_beta: float = 1.5,
    loss: str = "ce",
    target: Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | None = 0,
):
    """Transfer attack: MI/DI/TI/VMI-FGSM on ``surrogate`` (one model or an ensemble), judged on ``model``.

    On the surrogate: ``g ← μ·g + (W ∗ ∇ₓL(T(x_t)) + v) / ‖·‖₁``, ``x_{t+1} = Π(x_t + α · dir(g))`` for
    ``steps`` steps of size ``α`` (default ``ε / steps``), where ``T`` is DI's random resize-and-pad, ``W`` TI's
    Gaussian kernel, ``v`` VMI's variance term and ``Π`` the projection onto the ball ∩ box. Every step runs
    (no early stop: the target is not consulted while crafting). ``model`` is then queried on the result.

    Parameters
    ----------
    surrogate : a torch module returning logits, or a list of them attacked through their mean logits.
    model : the attacked model: a torch module, a BlackBox, a scikit-learn estimator or a callable returning
        scores or labels. It is queried twice per sample (clean and adversarial), never differentiated.
    x, y : inputs inside ``bounds`` and their labels.
    eps, norm : the threat model ("linf", "l2" or "l1").
    steps, alpha : iterations and step size (default ``eps / steps``).
    decay : the momentum μ (0 gives I-FGSM).
    diversity_prob, resize_rate : DI's probability ``p`` (0 turns DI off) and resize factor (Xie et al. use
        330/299 ≈ 1.1; below 1 the input is shrunk and padded instead). DI is off by default: on the bundled
        8×8 digits it lowered the transfer rate (benchmarks/BENCHMARKS.md); on natural images of 32 px and more
        the papers report gains with ``p = 0.5``.
    kernel_size : TI's Gaussian kernel size (odd; 0 turns TI off). For 8×8 images 3–5 is sensible, for
        ImageNet the reference uses 15.
    vmi_samples, vmi_beta : VMI's ``N`` neighbours drawn from ``[−β·ε, β·ε]`` per coordinate (0 turns VMI off).
    loss : "ce", "margin" or "dlr" on the surrogate. ``target`` : target classes for a targeted attack.
    seed : seeds DI's transformations and VMI's neighbours.

    Returns
    -------
    AttackResult
        ``success`` is judged on ``model``. ``forwards``/``backwards`` count the surrogate passes and
        ``queries`` the queries to ``model``. ``params`` holds ``transfer_rate`` (the share of the points
        ``model`` classified correctly that the attack fooled), ``surrogate_success_rate`` (white-box success on
        the surrogate) and ``transfer_given_surrogate`` (the share of points fooling the surrogate and correctly
        classified by ``model`` that also fool ``model``).

    References
    ----------
    Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018.
    Xie et al., "Improving Transferability of Adversarial Examples with Input Diversity", CVPR 2019.
    Dong, Pang, Su & Zhu, "Evading Defenses to Transferable Adversarial Examples by Translation-Invariant
    Attacks", CVPR 2019.
    Wang & He, "Enhancing the Transferability of Adversarial Attacks through Variance Tuning", CVPR 2021.
    """
    started = time.perf_counter()
    sur = _surrogate(surrogate)
    image = torch.is_tensor(x) and x.dim() == 4
    p = float(diversity_prob)
    _check(steps, decay, p, resize_rate, kernel_size, vmi_samples, vmi_beta)
    if (p > 0 or kernel_size > 0) and not image:
        raise InputError("input diversity and TI need image batches of shape (n, c, h, w); "
                         "pass diversity_prob=0 and kernel_size=0 for other inputs")
    with setup(sur, x, y, eps=eps, norm=norm, bounds=bounds, target=target, seed=seed) as s:
        eps_max = float(s.eps.max())
        step = alpha if alpha is not None else eps_max / steps
        kernel = gaussian_kernel(kernel_size, s.x.shape[1], s.x) if kernel_size > 0 else None

        def transform(z: Tensor) -> Tensor:  # DI
            return input_diversity(z, p, resize_rate, s.generator)

        def smooth(grad: Tensor) -> Tensor:  # TI: W ∗ ∇
            if kernel is None:
                return grad
            return F.conv2d(grad, kernel, padding=kernel_size // 2, groups=grad.shape[1])

        x_adv = _craft(s, steps=steps, alpha=step, decay=decay, loss=loss, transform=transform if p > 0 else None,
                       smooth=smooth,
                       vmi_samples=vmi_samples, vmi_beta=vmi_beta)
        on_surrogate = is_adversarial(s.model.logits(x_adv), s.y, s.target)
        forwards, backwards = s.model.forwards, s.model.backwards
    with query_setup(model, s.x, s.y, eps=s.eps, norm=s.norm, max_queries=2, bounds=s.bounds, target=s.target,
                     seed=seed, needs="labels", norms=("linf", "l2", "l1")) as q:
        idx = torch.arange(x_adv.shape[0], device=x_adv.device)
        fooled = q.is_adversarial(q.predict(x_adv, idx), idx)
        tr = q.tracker()
        tr.update(None, x_adv, fooled)
        correct = q.clean_pred == q.y if q.target is None else q.clean_pred != q.target
        params = dict(eps=eps_max, norm=s.norm, steps=steps, alpha=step, decay=decay, diversity_prob=p,
                      resize_rate=resize_rate, kernel_size=kernel_size, vmi_samples=vmi_samples, vmi_beta=vmi_beta,
                      loss=loss, targeted=target is not None, surrogates=len(getattr(sur, "members", [sur])),
                      transfer_rate=_share(fooled, correct),
                      surrogate_success_rate=float(on_surrogate.float().mean()),
                      transfer_given_surrogate=_share(fooled, correct & on_surrogate))
        r = q.result(tr, "transfer", params)
    r.forwards, r.backwards, r.seconds = forwards, backwards, time.perf_counter() - started
    return r


def _share(hit: Tensor, among: Tensor) -> float:
    """The share of ``among`` where ``hit`` holds (NaN when ``among`` is empty)."""
    k = int(among.sum())
    return float((hit & among).sum()) / k if k else float("nan")
