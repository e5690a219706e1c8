"""Adversarial training: PGD-AT, TRADES, MART and single-step training with random init (FGSM-RS, N-FGSM).

Each method is one function that builds its training loss for a batch, written in the paper's notation; all of
them share the inner maximisation :func:`adverse.defenses._at.maximize` (projected steepest ascent with the
threat model's projections). :func:`adversarial_step` takes one optimizer step with any of them, for users' own
loops; :func:`adversarial_training` is the trainer, with early stopping on robust validation accuracy (robust
overfitting, Rice et al. 2020) and, for single-step methods, a monitor that detects catastrophic overfitting and
rolls back to the last good weights (Wong et al. 2020).

Conventions
-----------
* The inner maximisation runs the model in eval mode with frozen parameters (as TRADES' and MART's reference
  code do), so it never updates BatchNorm statistics; the weight step runs in train mode. The caller's mode is
  restored after every step.
* Passes are counted per sample: one forward (or backward) pass over a batch of ``n`` counts ``n``. PGD-K AT
  costs ``K + 1`` forwards and ``K + 1`` backwards per sample and step; TRADES-K ``K + 3`` forwards (the clean
  target distribution is computed once, not once per inner step as in the reference code) and ``K + 2``
  backwards; MART-K ``K + 2`` and ``K + 2``; FGSM-RS, N-FGSM and FGSM ``2`` and ``2``.
* The trainer trains the model it is given, in place, and is deterministic for a given ``seed``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..errors import InputError, ModelError
from ..evasion._core import check_inputs, make_generator
from ..models import Counted, attack_mode
from ..threat import check_norm
from ..validation import NONNEG, POSITIVE, validated
from ._at import check_eps, maximize

Tensor = torch.Tensor

METHODS = ("pgd", "trades", "mart", "fgsm-rs", "n-fgsm", "fgsm")
SINGLE_STEP = ("fgsm-rs", "n-fgsm", "fgsm")


@dataclass(frozen=True)
class Config:
    """A validated adversarial-training configuration (see :func:`adversarial_step` for the meaning)."""

    method: str
    eps: float
    norm: str
    steps: int
    alpha: float
    beta: float
    bounds: tuple[float, float]


@dataclass
class StepResult:
    """One optimizer step: the training loss (a detached scalar tensor), the training inputs used and the
    per-sample passes spent (forwards and backwards, each counting one per sample)."""

    loss: Tensor
    x_adv: Tensor
    forwards: int
    backwards: int


def make_config(method: str, eps: float, norm: str, steps: int | None, alpha: float | None, beta: float,
                bounds: tuple[float, float], shape: tuple[int, ...]) -> Config:
    """Validate the arguments of a trainer and fill in the defaults; raise :class:`InputError` naming the fix."""
    if method not in METHODS:
        raise InputError(f"unknown adversarial-training method {method!r}; use one of {', '.join(METHODS)}")
    norm = check_norm(norm)
    bounds = (float(bounds[0]), float(bounds[1]))
    if not bounds[0] < bounds[1]:
        raise InputError(f"bounds must satisfy lo < hi, got {bounds!r}")
    e = check_eps(eps, norm, bounds, shape)
    if method in SINGLE_STEP:
        if steps not in (None, 1):
            raise InputError(f"{method} is a single-step method (steps=1), got steps={steps}; "
                             "use method='pgd' for a multi-step inner maximisation")
        steps = 1
    elif steps is None:
        steps = 10
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an integer ≥ 1, got {steps!r}")
    if alpha is None:
        # FGSM-RS: 1.25·eps (Wong et al.); N-FGSM and FGSM: eps (de Jorge et al.; Goodfellow et al.);
        # multi-step: 2.5·eps/K, as adverse.evasion.pgd (Madry et al.'s CIFAR-10 setting is 2.5·eps/10)
        alpha = {"fgsm-rs": 1.25 * e, "n-fgsm": e, "fgsm": e}.get(method, 2.5 * e / steps)
    if not (float(alpha) > 0 and float(alpha) < float("inf")):
        raise InputError(f"alpha (the inner step size) must be a finite number > 0, got {alpha!r}")
    if not float(beta) >= 0:
        raise InputError(f"beta (the weight of the robust term of TRADES/MART) must be ≥ 0, got {beta!r}")
    return Config(method, e, norm, steps, float(alpha), float(beta), bounds)


# ----------------------------------------------------------------------------------- the training losses
def _inner(model: nn.Module, x: Tensor, loss_fn: Callable[[Tensor], Tensor], c: Config, g: torch.Generator,
           **kw: Any) -> tuple[Tensor, int, int]:
    """The inner maximisation in attack mode; returns (x', forwards, backwards)."""
    with attack_mode(model):
        counted = Counted(model)
        x_adv = maximize(counted, x, loss_fn, eps=c.eps, norm=c.norm, steps=c.steps, alpha=c.alpha,
                         bounds=c.bounds, generator=g, **kw)
    return x_adv, counted.forwards, counted.backwards


def _clean_probs(model: nn.Module, x: Tensor) -> Tensor:
    """p(x) in attack mode, without a graph: the target distribution of TRADES' inner maximisation."""
    with attack_mode(model), torch.no_grad():
        return F.softmax(model(x), dim=1)


def _kl(p: Tensor, log_q: Tensor) -> Tensor:
    """Per-sample KL(p ‖ q) from probabilities ``p`` and log-probabilities ``log q``."""
    return (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(dim=1)


def pgd_at_loss(model: nn.Module, x: Tensor, y: Tensor, c: Config, g: torch.Generator):
    """Madry et al.: ``min_θ E[ max_{δ ∈ S} L(f_θ(x + δ), y) ]`` with L the cross-entropy and the inner maximum
    approximated by K steps of PGD from a uniform random start.

    Returns ``(loss, x', forwards, backwards)``; ``loss`` has a graph to θ (the model in train mode).

    References
    ----------
    Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to Adversarial Attacks",
    ICLR 2018.
    """
    x_adv, fw, bw = _inner(model, x, lambda z: F.cross_entropy(z, y, reduction="none"), c, g, init="uniform")
    loss = F.cross_entropy(model(x_adv), y)
    return loss, x_adv, fw + x.shape[0], bw + x.shape[0]


def trades_loss(model: nn.Module, x: Tensor, y: Tensor, c: Config, g: torch.Generator):
    """TRADES: ``min_θ E[ L(f_θ(x), y) + β · max_{x' ∈ S} KL(f_θ(x) ‖ f_θ(x')) ]``.

    The inner maximisation ascends ``KL(p(x) ‖ p(x'))`` from ``x' = x + 0.001 · N(0, I)`` with ``p(x)`` fixed
    (computed once, in eval mode); the outer loss is the cross-entropy on ``x`` plus β times the KL summed and
    divided by the batch size, with gradients through both ``f(x)`` and ``f(x')`` (as in the reference code).

    References
    ----------
    Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off between Robustness and
    Accuracy", ICML 2019 (``yaodongyu/TRADES:trades.py``).
    """
    p_nat = _clean_probs(model, x)
    x_adv, fw, bw = _inner(model, x, lambda z: _kl(p_nat, F.log_softmax(z, dim=1)), c, g, init="normal")
    z_nat, z_adv = model(x), model(x_adv)
    robust = _kl(F.softmax(z_nat, dim=1), F.log_softmax(z_adv, dim=1)).mean()
    loss = F.cross_entropy(z_nat, y) + c.beta * robust
    n = x.shape[0]
    return loss, x_adv, fw + 3 * n, bw + 2 * n


def mart_loss(model: nn.Module, x: Tensor, y: Tensor, c: Config, g: torch.Generator):
    """MART: ``BCE(p(x'), y) + β · KL(p(x) ‖ p(x')) · (1 − p_y(x))``, averaged over the batch, with x' from
    K-step PGD on the cross-entropy; ``BCE(p, y) = −log p_y − log(1 − max_{k≠y} p_k)`` (the boosted CE).

    Misclassified examples (small ``p_y(x)``) get more weight in the robust term.

    References
    ----------
    Wang, Zou, Yi, Bailey, Ma & Gu, "Improving Adversarial Robustness Requires Revisiting Misclassified
    Examples", ICLR 2020 (``YisenWang/MART:mart.py``).
    """
    x_adv, fw, bw = _inner(model, x, lambda z: F.cross_entropy(z, y, reduction="none"), c, g, init="uniform")
    z_nat, z_adv = model(x), model(x_adv)
    p_adv, p_nat = F.softmax(z_adv, dim=1), F.softmax(z_nat, dim=1)
    other = p_adv.scatter(1, y.unsqueeze(1), 0.0).amax(dim=1)  # max_{k≠y} p_k(x')
    bce = F.cross_entropy(z_adv, y, reduction="none") - torch.log((1.0001 - other).clamp_min(1e-12))
    p_y = p_nat.gather(1, y.unsqueeze(1)).squeeze(1)
    robust = _kl(p_nat, torch.log(p_adv.clamp_min(1e-12))) * (1.0000001 - p_y)
    loss = bce.mean() + c.beta * robust.mean()
    n = x.shape[0]
    return loss, x_adv, fw + 2 * n, bw + 2 * n


def _single_step(init: str, init_scale: float, project_ball: bool):
    def loss_fn(model: nn.Module, x: Tensor, y: Tensor, c: Config, g: torch.Generator):
        x_adv, fw, bw = _inner(model, x, lambda z: F.cross_entropy(z, y, reduction="none"), c, g, init=init,
                               init_scale=init_scale, project_ball=project_ball)
        return F.cross_entropy(model(x_adv), y), x_adv, fw + x.shape[0], bw + x.shape[0]

    return loss_fn


def fgsm_rs_loss(model: nn.Module, x: Tensor, y: Tensor, c: Config, g: torch.Generator):
    """FGSM with random init ("fast is better than free"): ``δ ~ U(−ε, ε)``,
    ``δ ← Π_S(δ + α · sign(∇_δ L(f(x + δ), y)))`` with ``α = 1.25 ε``, then the cross-entropy at ``x + δ``.

    References
    ----------
    Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020.
    """
    return _single_step("uniform", 1.0, True)(model, x, y, c, g)


def n_fgsm_loss(model: nn.Module, x: Tensor, y: Tensor, c: Config, g: torch.Generator):
    """N-FGSM: ``η ~ U(−kε, kε)`` with ``k = 2``, ``x' = x + η + α · sign(∇ L(f(x + η), y))`` with ``α = ε``,
    **not** projected back onto the ε-ball (only onto the input box), then the cross-entropy at ``x'``.

    The training points lie up to ``3ε`` from ``x`` by design; the noise and the missing projection avoid
    catastrophic overfitting at single-step cost.

    References
    ----------
    de Jorge, Bibi, Volpi, Sanyal, Torr, Rogez & Dokania, "Make Some Noise: Reliable and Efficient Single-Step
    Adversarial Training", NeurIPS 2022 (``pdejorge/N-FGSM:train.py``).
    """
    return _single_step("uniform", 2.0, False)(model, x, y, c, g)


def fgsm_loss(model: nn.Module, x: Tensor, y: Tensor, c: Config, g: torch.Generator):
    """FGSM adversarial training from the clean point (zero init), the baseline that overfits catastrophically:
    ``x' = Π_S(x + ε · sign(∇ₓ L(f(x), y)))``.

    References
    ----------
    Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
    """
    return _single_step("zero", 1.0, True)(model, x, y, c, g)


LOSSES: dict[str, Callable[..., tuple[Tensor, Tensor, int, int]]] = {
    "pgd": pgd_at_loss, "trades": trades_loss, "mart": mart_loss, "fgsm-rs": fgsm_rs_loss,
    "n-fgsm": n_fgsm_loss, "fgsm": fgsm_loss,
}


# ----------------------------------------------------------------------------------- one step
def _check_batch(model: nn.Module, batch: Any, bounds: tuple[float, float]) -> tuple[Tensor, Tensor]:
    if not isinstance(model, nn.Module):
        raise ModelError(f"adversarial training needs a torch.nn.Module returning logits, got {type(model).__name__}")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise InputError("batch must be a pair (x, y) of inputs and integer labels")
    return check_inputs(batch[0], batch[1], bounds)


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                   loss_of: Callable[[], tuple[Tensor, Tensor, int, int]]) -> StepResult:
    """Run ``loss_of()`` with the model in train mode, take one optimizer step, restore the caller's modes."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss, x_adv, fw, bw = loss_of()
        if not torch.isfinite(loss):
            raise ModelError(f"the training loss is {float(loss)}; lower the learning rate or check the inputs")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    finally:
        for m, training in modes:
            m.training = training
    return StepResult(loss.detach(), x_adv, fw, bw)


@validated(eps=POSITIVE, beta=NONNEG)
def adversarial_step(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    method: str = "pgd",
    eps: float,
    norm: str = "linf",
    steps: int | None = None,
    alpha: float | None = None,
    beta: float = 6.0,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int | torch.Generator = 0,
) -> StepResult:
    """One adversarial-training step on ``batch = (x, y)``: build the method's loss, back-propagate, step.

    Parameters
    ----------
    model : the classifier (returns logits); its parameters are updated by ``optimizer``. The inner maximisation
        runs in eval mode, the weight step in train mode; the caller's modes are restored afterwards.
    batch : ``(x, y)``, inputs inside ``bounds`` and integer labels.
    optimizer : a torch optimizer over the model's parameters.
    method : "pgd" (Madry et al.), "trades", "mart", "fgsm-rs" (Wong et al.), "n-fgsm" (de Jorge et al.) or
        "fgsm" (zero init; the baseline that overfits catastrophically).
    eps, norm : the training threat model, eps in input units.
    steps : inner steps K for "pgd", "trades", "mart" (default 10); single-step methods take 1.
    alpha : inner step size; default 2.5·eps/K (multi-step), 1.25·eps (FGSM-RS), eps (N-FGSM, FGSM).
    beta : weight of the robust term (TRADES, MART; default 6 as in both papers).
    seed : an int or a ``torch.Generator`` for the random starts (pass one generator across steps in a loop).

    Returns
    -------
    StepResult with the loss, the training inputs x' and the per-sample forward and backward passes spent.

    References
    ----------
    See :func:`pgd_at_loss`, :func:`trades_loss`, :func:`mart_loss`, :func:`fgsm_rs_loss`, :func:`n_fgsm_loss`.
    """
    x, y = _check_batch(model, batch, (float(bounds[0]), float(bounds[1])))
    c = make_config(method, eps, norm, steps, alpha, beta, bounds, tuple(x.shape[1:]))
    g, _ = make_generator(seed, x.device)
    return optimizer_step(model, optimizer, lambda: LOSSES[c.method](model, x, y, c, g))


# ----------------------------------------------------------------------------------- the trainer
@dataclass
class TrainingResult:
    """What a trainer returns: the trained model (the same object that was passed in), one record per epoch,
    the epoch whose weights were kept, whether training stopped early or rolled back, and the passes spent."""

    model: nn.Module
    method: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    rolled_back: bool = False
    forwards: int = 0
    backwards: int = 0
    steps: int = 0
    seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def passes_per_step(self) -> tuple[float, float]:
        """Forward and backward passes per sample and optimizer step."""
        n = max(self.params.get("samples_seen", 0), 1)
        return self.forwards / n, self.backwards / n


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, steps: int,
                    bounds: tuple[float, float], seed: int = 0) -> float:
    """PGD-``steps`` robust accuracy (one random start), leaving the model as found."""
    from ..evasion import pgd

    return pgd(model, x, y, eps=eps, norm=norm, steps=steps, bounds=bounds, seed=seed).robust_accuracy


def robust_accuracy_on(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, steps: int,
                      bounds: tuple[float, float], seed: int = 0) -> Callable[[], float]:
    """A callable measuring :func:`robust_accuracy` of ``model`` on fixed points (for early stopping and the
    catastrophic-overfitting monitor)."""
    return lambda: robust_accuracy(model, x, y, eps=eps, norm=norm, steps=steps, bounds=bounds, seed=seed)


def check_dataset(data: Any, bounds: tuple[float, float] | None) -> tuple[Tensor, Tensor, tuple[float, float]]:
    if not isinstance(data, Dataset):
        if isinstance(data, (tuple, list)) and len(data) == 2:
            data = Dataset(data[0], data[1], "data", int(torch.as_tensor(data[1]).max()) + 1)
        else:
            raise InputError("data must be an adverse.data.Dataset or a pair (x, y) of tensors")
    b = data.bounds if bounds is None else (float(bounds[0]), float(bounds[1]))
    x, y = check_inputs(data.x, data.y, b)
    return x, y, b


def train_loop(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    step: Callable[[Tensor, Tensor, torch.optim.Optimizer, torch.Generator], StepResult],
    *,
    name: str,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer | None,
    lr: float,
    weight_decay: float,
    seed: int,
    evaluate: Callable[[], float] | None = None,
    patience: int | None = None,
    monitor: Callable[[], float] | None = None,
    co_drop: float = 0.2,
    schedule: str = "constant",
    params: dict[str, Any] | None = None,
) -> TrainingResult:
    """The epoch loop shared by the adversarial and regularized trainers.

    ``step(xb, yb, optimizer, generator)`` takes one optimizer step. ``evaluate()`` (robust validation accuracy)
    runs after every epoch; the weights of the best epoch are restored at the end (early stopping against robust
    overfitting), and training stops after ``patience`` epochs without improvement. ``monitor()`` (robust
    accuracy on a fixed training subset) runs after every epoch too; a fall of more than ``co_drop`` below its
    best value is catastrophic overfitting: the weights of the monitor's best epoch are restored and training
    stops. ``schedule="cosine"`` anneals the learning rate to 0 over all steps (per batch).
    """
    if schedule not in ("constant", "cosine"):
        raise InputError(f"unknown schedule {schedule!r}; use 'constant' or 'cosine'")
    if not isinstance(epochs, int) or epochs < 1:
        raise InputError(f"epochs must be an integer ≥ 1, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise InputError(f"patience must be an integer ≥ 1 or None, got {patience!r}")
    if not 0 < co_drop <= 1:
        raise InputError(f"co_drop must lie in (0, 1], got {co_drop!r}")
    g, _ = make_generator(seed, x.device)
    order_gen = torch.Generator().manual_seed(int(seed))
    opt = optimizer if optimizer is not None else torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = None
    if schedule == "cosine":
        total_steps = epochs * -(-x.shape[0] // batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    res = TrainingResult(model=model, method=name, params=dict(params or {}, epochs=epochs, batch_size=batch_size,
                                                               lr=lr, weight_decay=weight_decay, seed=seed,
                                                               schedule=schedule))
    best_val, best_state, since_best = -1.0, None, 0
    best_mon, mon_state = -1.0, None
    seen = 0
    t_start = time.perf_counter()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = torch.randperm(x.shape[0], generator=order_gen).to(x.device)
        total = torch.zeros((), dtype=x.dtype, device=x.device)
        for i in range(0, x.shape[0], batch_size):
            b = order[i: i + batch_size]
            r = step(x[b], y[b], opt, g)
            if sched is not None:
                sched.step()
            res.forwards += r.forwards
            res.backwards += r.backwards
            res.steps += 1
            seen += b.numel()
            total = total + r.loss * b.numel()
        record: dict[str, Any] = {"epoch": epoch, "loss": float(total) / x.shape[0],
                                  "seconds": time.perf_counter() - t0}
        if monitor is not None:
            acc = monitor()
            record["monitor_robust_accuracy"] = acc
            if acc > best_mon:
                best_mon, mon_state = acc, copy.deepcopy(model.state_dict())
            elif acc < best_mon - co_drop:
                record["catastrophic_overfitting"] = True
                res.history.append(record)
                model.load_state_dict(mon_state)
                res.rolled_back, res.stopped_early = True, True
                res.best_epoch = max(h["epoch"] for h in res.history
                                     if h.get("monitor_robust_accuracy") == best_mon)
                break
        if evaluate is not None:
            acc = evaluate()
            record["val_robust_accuracy"] = acc
            if acc > best_val:
                best_val, best_state, since_best = acc, copy.deepcopy(model.state_dict()), 0
                res.best_epoch = epoch
            else:
                since_best += 1
        res.history.append(record)
        if patience is not None and evaluate is not None and since_best >= patience:
            res.stopped_early = True
            break
    if not res.rolled_back:
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            res.best_epoch = res.history[-1]["epoch"]
    res.params["samples_seen"] = seen
    res.seconds = time.perf_counter() - t_start
    model.eval()
    return res


@validated(eps=POSITIVE, beta=NONNEG)
def adversarial_training(
    model: nn.Module,
    data: Dataset,
    method: str = "pgd",
    *,
    eps: float,
    norm: str = "linf",
    steps: int | None = None,
    alpha: float | None = None,
    beta: float = 6.0,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: torch.optim.Optimizer | None = None,
    validation: Dataset | None = None,
    val_steps: int = 10,
    patience: int | None = None,
    monitor: bool | None = None,
    monitor_size: int = 256,
    co_drop: float = 0.2,
    schedule: str = "constant",
    bounds: tuple[float, float] | None = None,
    seed: int = 0,
) -> TrainingResult:
    """Train ``model`` (in place) with an adversarial-training method; deterministic for a given ``seed``.

    Parameters
    ----------
    model : the classifier, returning logits. It is trained in place and returned in eval mode.
    data : the training set (an :class:`adverse.data.Dataset` or a pair ``(x, y)``).
    method : "pgd", "trades", "mart", "fgsm-rs", "n-fgsm" or "fgsm" (see :func:`adversarial_step`).
    eps, norm, steps, alpha, beta : the training threat model and the method's parameters.
    epochs, batch_size, lr, weight_decay, optimizer : the outer optimisation (Adam by default).
    schedule : "constant" learning rate or "cosine" annealing to 0 over the run.
    validation : held-out data for early stopping on robust accuracy (PGD-``val_steps`` at ``eps``, fixed seed):
        the weights of the best epoch are kept (Rice et al. 2020); with ``patience`` training stops after that
        many epochs without improvement.
    monitor : watch PGD-``val_steps`` accuracy on ``monitor_size`` fixed training points after every epoch and,
        when it falls more than ``co_drop`` below its best, roll back to the best weights and stop (catastrophic
        overfitting). Default: on for single-step methods.
    bounds : the input range; default ``data.bounds``.
    seed : seeds the batch order and every random start.

    Returns
    -------
    TrainingResult: ``model``, per-epoch ``history`` (loss, seconds, monitored and validation robust accuracy),
    ``best_epoch``, ``stopped_early``, ``rolled_back`` and the per-sample passes (``passes_per_step``).

    References
    ----------
    Madry et al., ICLR 2018; Zhang et al., ICML 2019; Wang et al., ICLR 2020; Wong, Rice & Kolter, ICLR 2020;
    de Jorge et al., NeurIPS 2022; Rice, Wong & Kolter, "Overfitting in adversarially robust deep learning",
    ICML 2020.
    """
    x, y, b = check_dataset(data, bounds)
    c = make_config(method, eps, norm, steps, alpha, beta, b, tuple(x.shape[1:]))
    _check_batch(model, (x[:1], y[:1]), b)
    if monitor is None:
        monitor = c.method in SINGLE_STEP
    evaluate = mon = None
    if validation is not None:
        xv, yv, _ = check_dataset(validation, b)
        evaluate = robust_accuracy_on(model, xv, yv, eps=c.eps, norm=c.norm, steps=val_steps, bounds=b, seed=seed)
    if monitor:
        pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed) + 1))[:monitor_size]
        xm, ym = x[pick.to(x.device)], y[pick.to(x.device)]
        mon = robust_accuracy_on(model, xm, ym, eps=c.eps, norm=c.norm, steps=val_steps, bounds=b, seed=seed)
    loss_fn = LOSSES[c.method]

    def step(xb: Tensor, yb: Tensor, opt: torch.optim.Optimizer, g: torch.Generator) -> StepResult:
        return optimizer_step(model, opt, lambda: loss_fn(model, xb, yb, c, g))

    return train_loop(model, x, y, step, name=c.method, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                      lr=lr, weight_decay=weight_decay, seed=seed, evaluate=evaluate, patience=patience,
                      monitor=mon, co_drop=co_drop, schedule=schedule,
                      params={"eps": c.eps, "norm": c.norm, "steps": c.steps, "alpha": c.alpha, "beta": c.beta,
                              "monitor": bool(monitor), "val_steps": val_steps})
