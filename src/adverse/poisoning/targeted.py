"""Targeted clean-label poisoning of chosen test points: Poison Frogs (feature collision) and Witches' Brew
(gradient matching). The poisons are training images of the adversarial class, perturbed within an L∞ budget
``eps``, with their correct labels; the victim that trains on them should classify the *target* input as the
adversarial class and leave other inputs alone.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..errors import InputError
from ..threat import clip_to_box, linf_box
from ..validation import validated
from ._common import budget, check_class, check_data, check_eps, check_rate, features, select
from .data import PoisonedData


def _target(x_target: torch.Tensor, data: Dataset) -> torch.Tensor:
    """The target input as a batch of one, checked against the training set's shape and bounds."""
    if not torch.is_tensor(x_target):
        raise InputError(f"x_target must be a torch.Tensor, got {type(x_target).__name__}")
    t = x_target if x_target.dim() == data.x.dim() else x_target[None]
    if tuple(t.shape) != (1, *data.x.shape[1:]):
        raise InputError(f"x_target must be one input of shape {tuple(data.x.shape[1:])}, got {tuple(x_target.shape)}")
    lo, hi = data.bounds
    if not torch.isfinite(t).all() or t.min() < lo - 1e-6 or t.max() > hi + 1e-6:
        raise InputError(f"x_target must be finite and inside the bounds {data.bounds}")
    return t.to(data.x.dtype)


def _flat_grad(loss: torch.Tensor, params: list[nn.Parameter], create_graph: bool) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params, create_graph=create_graph))


def _setup(data: Dataset, x_target: torch.Tensor, adv_label: int, rate: float, eps: float, seed: int,
           grad_norm_model: nn.Module | None = None):
    """Validate, then choose the base images: ``round(rate · n)`` training images of the adversarial class,
    drawn at random, or (``grad_norm_model`` given) those with the largest parameter-gradient norm."""
    check_data(data)
    t = _target(x_target, data)
    adv_label = check_class(adv_label, data.num_classes, "adv_label")
    rate = check_rate(rate)
    eps = check_eps(eps, data.bounds)
    pool = (data.y == adv_label).nonzero().flatten()
    count = max(budget(rate, len(data)), 1)
    if grad_norm_model is None:
        return t, adv_label, rate, eps, select(pool, count, seed, f"poisons of class {adv_label}")
    if count > pool.numel():
        raise InputError(f"need {count} poisons of class {adv_label} but the training set has {pool.numel()}")
    params = [p for p in grad_norm_model.parameters() if p.requires_grad]
    norms = torch.stack([
        torch.sqrt(sum(g.pow(2).sum() for g in _flat_grad(
            F.cross_entropy(grad_norm_model(data.x[i : i + 1]), data.y[i : i + 1]), params, False)))
        for i in pool.tolist()
    ])
    return t, adv_label, rate, eps, pool[norms.argsort(descending=True)[:count]].sort().values


def _result(data: Dataset, idx: torch.Tensor, x_poison: torch.Tensor, attack: str, params: dict,
            t: torch.Tensor, y_target: int | None, adv_label: int) -> PoisonedData:
    x = data.x.clone()
    x[idx] = x_poison.detach()
    targets = {"x": t.detach().clone(), "adv_label": torch.tensor([adv_label]), "x_clean": data.x[idx].clone()}
    if y_target is not None:
        targets["y"] = torch.tensor([int(y_target)])
    return PoisonedData(x, data.y.clone(), idx, attack, params, data.num_classes, data.y.clone(), data.bounds,
                        None, targets)


def _frozen_copy(model: nn.Module) -> tuple[nn.Module, list[nn.Parameter]]:
    """A private eval-mode copy of ``model`` whose parameters require grad, its answer unwrapped to logits
    (:func:`adverse.models.as_classifier`); the caller's model is not touched."""
    from ..models import as_classifier

    m = as_classifier(copy.deepcopy(model)).eval()
    params = list(m.parameters())
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    return m, params


@validated
def feature_collision(
    model: nn.Module, data: Dataset, x_target: torch.Tensor, *, adv_label: int, y_target: int | None = None,
    rate: float = 0.01, eps: float = 0.25, steps: int = 200, lr: float = 0.05, beta0: float = 0.25,
    opacity: float = 0.0, layer: str | nn.Module | None = None, seed: int = 0,
) -> PoisonedData:
    """Poison Frogs: make base images of the adversarial class collide with the target in feature space.

    For each base ``b`` (a training image of class ``adv_label``), Algorithm 1 of Shafahi et al.:
    forward step ``x̂ = x − λ ∇_x ‖f(x) − f(t)‖²``, backward (proximal) step
    ``x = (x̂ + λβ b) / (1 + λβ)``, with ``β = β0 · d_f² / d_b²`` (input dimension ``d_b``, feature dimension
    ``d_f``), followed here by the projection onto ``‖x − b‖_∞ ≤ eps`` ∩ bounds. ``opacity > 0`` first blends
    the target into the base (the paper's "watermarking" for end-to-end training).

    Parameters
    ----------
    model : the attacker's feature extractor (a trained classifier); left exactly as found.
    data : the clean training set the poisons are drawn from and inserted into.
    x_target : the test input to attack, shape (c, h, w) or (1, c, h, w).
    adv_label : the class the target should be given.
    y_target : the target's true label (stored for bookkeeping), optional.
    rate : fraction of the training set used as poisons (at least one).
    eps : L∞ budget on each poison, in input units.
    steps, lr, beta0 : the optimizer (λ = lr).
    opacity : watermark opacity γ: ``b ← (1 − γ) b + γ t`` before optimizing (then projected).
    layer : feature layer, the input of which is ``f`` (default: the input of the last ``nn.Linear``).
    seed : which bases are drawn.

    Returns
    -------
    PoisonedData (labels unchanged; ``targets`` holds the target and ``adv_label``).

    References
    ----------
    Shafahi, Huang, Najibi, Suciu, Studer, Dumitras & Goldstein, "Poison Frogs! Targeted Clean-Label Poisoning
    Attacks on Neural Networks", NeurIPS 2018.
    """
    from ..models import attack_mode

    t, adv_label, rate, eps, idx = _setup(data, x_target, adv_label, rate, eps, seed)
    b = data.x[idx]
    if not 0.0 <= float(opacity) < 1.0:
        raise InputError(f"opacity must lie in [0, 1), got {opacity!r}")
    lower, upper = linf_box(b, torch.full((b.shape[0],), eps, dtype=b.dtype), data.bounds)
    with attack_mode(model):
        f_t = features(model, t, layer).detach()
        beta = beta0 * f_t.shape[1] ** 2 / b[0].numel() ** 2
        x = b + clip_to_box((1 - opacity) * b + opacity * t - b, lower, upper)
        for _ in range(steps):
            x = x.detach().requires_grad_(True)
            loss = (features(model, x, layer, grad=True) - f_t).pow(2).sum()
            (g,) = torch.autograd.grad(loss, x)
            x_hat = x.detach() - lr * g
            x = (x_hat + lr * beta * b) / (1 + lr * beta)
            x = b + clip_to_box(x - b, lower, upper)
    params = {"adv_label": adv_label, "y_target": y_target, "rate": rate, "eps": eps, "steps": steps, "lr": lr,
              "beta0": beta0, "opacity": opacity, "layer": layer if isinstance(layer, str) else None, "seed": seed}
    return _result(data, idx, x, "feature_collision", params, t, y_target, adv_label)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator, fill: float = 0.0) -> torch.Tensor:
    """Each image translated by its own random integer offset in ``[-max_shift, max_shift]²`` (zero padding,
    value ``fill``, then an h×w crop): the random-crop augmentation of the Witches' Brew victims,
    written with indexing so that it is differentiable in ``x`` (the paper's differentiable augmentation)."""
    s = int(max_shift)
    if s < 0:
        raise InputError(f"max_shift must be ≥ 0, got {max_shift!r}")
    if s == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (s, s, s, s), value=fill)
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    rows = (torch.arange(h)[None] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w)[None] + dx[:, None])[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def shift_augmentation(max_shift: int = 1, seed: int = 0, fill: float = 0.0):
    """A victim's training-time augmentation as :func:`adverse.zoo.train_classifier`'s ``perturb``: every batch is
    randomly shifted by up to ``max_shift`` pixels (:func:`random_shift`, with its own generator seeded with
    ``seed``). Witches' Brew victims train with random crops; ``gradient_matching(..., augment=max_shift)``
    crafts through the same augmentation. ``adverse.poisoning.trainer(build, augment=k)`` uses it."""
    g = torch.Generator().manual_seed(int(seed))

    def perturb(_model: nn.Module, x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
        return random_shift(x, max_shift, g, fill)

    return perturb


def _cosine_mismatch(g_p: list[torch.Tensor], g_t: list[torch.Tensor], g_t_norm: torch.Tensor) -> torch.Tensor:
    """``1 − ⟨∇_θ L_t, ∇_θ L_p⟩ / (‖∇_θ L_t‖ ‖∇_θ L_p‖)`` over all parameters (Geiping et al., Eq. 3)."""
    dot = sum((a * b).sum() for a, b in zip(g_p, g_t))
    norm_p = torch.sqrt(sum(a.pow(2).sum() for a in g_p))
    return 1 - dot / (norm_p * g_t_norm + 1e-12)


@validated
def gradient_matching(
    model: nn.Module | Sequence[nn.Module], data: Dataset, x_target: torch.Tensor, *, adv_label: int, y_target: int | None = None,
    rate: float = 0.01, eps: float = 0.1, steps: int = 250, restarts: int = 8, tau: float = 0.1,
    selection: str = "gradient", retrain_fn: Callable[[Dataset, int], nn.Module] | None = None, retrains: int = 0,
    augment: int = 0, seed: int = 0,
) -> PoisonedData:
    """Witches' Brew: perturb base images of the adversarial class so that their training gradient aligns with
    the gradient that would teach the model ``f(x_t) = y_adv``.

    With the attacker's (clean-)trained parameters θ, the poisons' perturbations Δ minimize

        B(Δ) = 1 − ⟨∇_θ L(F(x_t; θ), y_adv), Σ_i ∇_θ L(F(x_i + Δ_i; θ), y_i)⟩
                   / (‖∇_θ L(F(x_t; θ), y_adv)‖ · ‖Σ_i ∇_θ L(F(x_i + Δ_i; θ), y_i)‖)

    subject to ``‖Δ_i‖_∞ ≤ eps`` and the bounds, by signed Adam (step ``tau · eps``, divided by 10 at 3/8, 5/8
    and 7/8 of the steps) from a uniform random start, projecting after every step; of ``restarts`` runs the one
    with the lowest ``B`` is kept (Algorithm 1). The labels ``y_i`` are correct, so the poisons are clean-label.

    Parameters
    ----------
    model : the attacker's trained surrogate, or a list of surrogates (an ensemble: ``B`` is averaged over
        them, which the paper finds transfers better to a victim trained from scratch); private copies are
        differentiated, the models are left as found.
    data : the clean training set the poisons are drawn from and inserted into.
    x_target : the test input to attack, shape (c, h, w) or (1, c, h, w).
    adv_label : the class the victim should give the target.
    y_target : the target's true label (for bookkeeping), optional.
    rate : fraction of the training set perturbed (the paper's budget; at least one image).
    eps : L∞ budget per poison, in input units (the paper uses 16/255 on CIFAR-10).
    steps, restarts, tau : M, R and the relative step size of Algorithm 1.
    selection : "gradient" (the adversarial-class images with the largest ‖∇_θ L‖ on the surrogate, the
        selection the authors recommend) or "random".
    retrain_fn, retrains : the retraining variant (Souri et al., Sleeper Agent, periodically retrain the surrogate
        on the poisoned training set while crafting): ``retrains`` times in each restart, after
        ``m · steps / (retrains + 1)`` steps (m = 1 … retrains), every surrogate is replaced by
        ``retrain_fn(poisoned_set, seed')`` — a model trained from scratch on the training set with the current
        poisons (e.g. ``adverse.poisoning.trainer(SmallCNN, epochs=20, augment=1)``), ``seed'`` drawn
        from ``seed`` — and the target gradient is recomputed on it, so the poisons are matched at parameters
        that have already learned them, as a victim's have (the restart's final ``B`` is measured on its last
        retrained surrogates). ``0`` (default) is the static Witches' Brew.
    augment : differentiable data augmentation (Geiping et al. craft the poisons through the same kind of random
        augmentation the victim trains with, so that they keep working through it; the authors' code does so by
        default): every
        step, each poison is shifted by a fresh random offset of up to ``augment`` pixels (:func:`random_shift`,
        the 8×8 analogue of the paper's random crops) before its gradient is taken; 0 (default) crafts without.
    seed : which bases are drawn ("random"), the random starts, shifts and retraining seeds.

    Returns
    -------
    PoisonedData; ``params["alignment"]`` is the best cosine similarity ``1 − B`` reached and
    ``params["seconds"]`` the crafting time.

    References
    ----------
    Geiping, Fowl, Huang, Czaja, Taylor, Moeller & Goldstein, "Witches' Brew: Industrial Scale Data Poisoning
    via Gradient Matching", ICLR 2021.
    Souri, Fowl, Chellappa, Goldblum & Goldstein, "Sleeper Agent: Scalable Hidden Trigger Backdoors for Neural
    Networks Trained from Scratch", NeurIPS 2022 (model retraining during crafting).
    """
    if selection not in ("gradient", "random"):
        raise InputError(f"selection must be 'gradient' or 'random', got {selection!r}")
    if steps < 1 or restarts < 1:
        raise InputError(f"steps and restarts must be ≥ 1, got {steps} and {restarts}")
    if retrains < 0 or (retrains > 0 and retrain_fn is None):
        raise InputError(f"retrains must be ≥ 0 and needs a retrain_fn(dataset, seed) -> model, got {retrains}")
    if isinstance(augment, bool) or not isinstance(augment, int) or augment < 0:
        raise InputError(f"augment (the largest random shift, in pixels) must be an integer ≥ 0, got {augment!r}")
    start = time.perf_counter()
    surrogates = [_frozen_copy(m) for m in (model if isinstance(model, (list, tuple)) else [model])]
    if not surrogates:
        raise InputError("model must be a module or a non-empty list of modules")
    t, adv_label, rate, eps, idx = _setup(data, x_target, adv_label, rate, eps, seed,
                                          surrogates[0][0] if selection == "gradient" else None)
    x, y = data.x[idx], data.y[idx]
    n = x.shape[0]
    lower, upper = linf_box(x, torch.full((n,), eps, dtype=x.dtype), data.bounds)
    y_adv = torch.tensor([adv_label])

    def target_grads(nets: list) -> list:
        out = []
        for net, params in nets:
            g_t = [g.detach() for g in _flat_grad(F.cross_entropy(net(t), y_adv), params, False)]
            out.append((g_t, torch.sqrt(sum(g.pow(2).sum() for g in g_t))))
        return out

    def mismatch(nets: list, grads: list, x_p: torch.Tensor, create_graph: bool) -> torch.Tensor:
        losses = [
            _cosine_mismatch(_flat_grad(F.cross_entropy(net(x_p), y, reduction="sum"), params, create_graph), g_t, nt)
            for (net, params), (g_t, nt) in zip(nets, grads)
        ]
        return torch.stack(losses).mean()

    def retrained(delta: torch.Tensor) -> list:
        x_all = data.x.clone()
        x_all[idx] = (x + delta).detach()
        poisoned = Dataset(x_all, data.y, data.name, data.num_classes, data.bounds)
        return [_frozen_copy(retrain_fn(poisoned, int(torch.randint(2**31 - 1, (1,), generator=gen))))
                for _ in surrogates]

    clean_grads = target_grads(surrogates)
    gen = torch.Generator().manual_seed(int(seed))
    best_delta, best_loss = torch.zeros_like(x), float("inf")
    milestones = [int(steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    retrain_at = {steps * m // (retrains + 1) for m in range(1, retrains + 1)}
    for _ in range(restarts):
        nets, grads = surrogates, clean_grads
        delta = clip_to_box((torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * eps, lower, upper)
        delta.requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=tau * eps)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
        for step in range(steps):
            if step in retrain_at:
                nets = retrained(delta)
                grads = target_grads(nets)
            x_p = random_shift(x + delta, augment, gen, data.bounds[0]) if augment else x + delta
            (grad,) = torch.autograd.grad(mismatch(nets, grads, x_p, True), delta)
            opt.zero_grad(set_to_none=True)
            delta.grad = grad.sign()
            opt.step()
            sched.step()
            with torch.no_grad():
                delta.copy_(clip_to_box(delta, lower, upper))
        delta = delta.detach()
        final = float(mismatch(nets, grads, x + delta, False).detach())
        if final < best_loss:
            best_loss, best_delta = final, delta
    params_out = {"adv_label": adv_label, "y_target": y_target, "rate": rate, "eps": eps, "steps": steps,
                  "restarts": restarts, "tau": tau, "selection": selection, "ensemble": len(surrogates),
                  "retrains": retrains, "augment": augment, "seed": seed, "alignment": 1 - best_loss,
                  "seconds": time.perf_counter() - start}
    return _result(data, idx, x + best_delta, "gradient_matching", params_out, t, y_target, adv_label)
