"""Differentially private training (DP-SGD) through Opacus, to a target ``(ε, δ)``.

DP-SGD (Abadi et al. 2016) samples each record into a batch with probability ``q`` (Poisson sampling), clips each
per-sample gradient to L2 norm ``C`` (``max_grad_norm``), adds ``N(0, σ² C² I)`` to their sum and takes a step.
Opacus computes the per-sample gradients, picks the noise multiplier ``σ`` that spends exactly the target ``ε``
over the planned steps, and its accountant (RDP by default, or PRV / GDP) reports the ``ε`` actually spent.

Opacus cannot compute per-sample gradients through layers that mix samples (BatchNorm) or hold unsupported
state; :func:`check_dp_compatible` finds them with ``opacus.validators.ModuleValidator`` and either names the fix
or applies it (``fix=True``: BatchNorm → GroupNorm).

References
----------
Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar & Zhang, "Deep Learning with Differential Privacy", CCS 2016.
Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in PyTorch", arXiv:2109.12298, 2021.
Gopi, Lee & Wutschitz, "Numerical Composition of Differential Privacy", NeurIPS 2021 (the PRV accountant).
Mironov, "Rényi Differential Privacy", CSF 2017 (the RDP accountant).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..errors import InputError, ModelError
from ..validation import POSITIVE, Rule, validated

ACCOUNTANTS = ("prv", "rdp", "gdp")


@dataclass
class DPResult:
    """What :func:`train_dp` returns.

    Attributes
    ----------
    model : the trained model (the caller's module, or its GroupNorm copy when ``fix=True`` replaced layers),
        in eval mode, with Opacus' hooks removed; its ``dp_epsilon`` and ``dp_delta`` attributes hold
        ``epsilon`` and ``delta``.
    epsilon : the ε the accountant reports for ``delta`` after all steps (≤ the target up to Opacus' tolerance).
    delta : the δ of the guarantee.
    target_epsilon : the ε asked for.
    noise_multiplier : σ, the noise standard deviation in units of ``max_grad_norm``.
    max_grad_norm : the per-sample clipping norm C.
    sample_rate : q, the Poisson sampling probability of each record per step.
    steps : the number of noisy steps taken.
    accountant : "prv", "rdp" or "gdp".
    seed : the seed of the sampling and the noise.
    """

    model: nn.Module
    epsilon: float
    delta: float
    target_epsilon: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    accountant: str
    seed: int
    canary_steps: torch.Tensor | None = None


@dataclass(frozen=True)
class GradientCanaries:
    """White-box gradient canaries for :func:`train_dp` (Steinke, Nasr & Jagielski 2023, §6: "Dirac canaries").

    Canary ``i`` is one more record whose clipped gradient is ``C · e_{coordinates[i]}`` at every step: zero
    except one coordinate, equal to the clipping norm ``C`` (``max_grad_norm``). An *included* canary
    (``included[i]``) is Poisson-sampled into each step with the records' rate ``q``, from its own generator
    seeded by ``seed`` (so the data's sampling and the noise draws are those of the same run without canaries),
    and when sampled its gradient is added to the step's sum of clipped gradients before the Gaussian noise, as
    Opacus adds a record's. An excluded canary never contributes.

    Attributes
    ----------
    coordinates : int64, distinct flat indices into the concatenation of the model's trainable parameters
        (``torch.cat([p.flatten() for p in model.parameters() if p.requires_grad])``).
    included : bool, one per coordinate: the canary's inclusion coin.
    seed : seeds the canaries' Poisson sampling.
    """

    coordinates: torch.Tensor
    included: torch.Tensor
    seed: int = 0


def _canary_plan(canaries: GradientCanaries, params: list[nn.Parameter]) -> tuple[torch.Tensor, torch.Tensor]:
    """(parameter index, offset within it) of each canary coordinate, after checking the canaries."""
    total = sum(p.numel() for p in params)
    c, inc = canaries.coordinates, canaries.included
    if not (isinstance(c, torch.Tensor) and c.dim() == 1 and not c.is_floating_point() and c.dtype != torch.bool):
        raise InputError("gradient_canaries.coordinates must be a 1-D integer tensor of flat parameter indices, got "
                         f"{type(c).__name__}{tuple(c.shape) if isinstance(c, torch.Tensor) else ''}")
    if not (isinstance(inc, torch.Tensor) and inc.dtype == torch.bool and inc.shape == c.shape):
        raise InputError("gradient_canaries.included must be a bool tensor with one coin per coordinate "
                         f"({len(c)}), got {type(inc).__name__}"
                         f"{(inc.dtype, tuple(inc.shape)) if isinstance(inc, torch.Tensor) else ''}")
    if len(c) and (int(c.min()) < 0 or int(c.max()) >= total):
        raise InputError(f"gradient_canaries.coordinates must lie in [0, {total}) (the model's trainable "
                         f"coordinates), got [{int(c.min())}, {int(c.max())}]")
    if len(torch.unique(c)) != len(c):
        raise InputError("gradient_canaries.coordinates must be distinct: two canaries on one coordinate cannot be "
                         "told apart; draw them without replacement (torch.randperm)")
    ends = torch.tensor([p.numel() for p in params]).cumsum(0)
    which = torch.searchsorted(ends, c.cpu().long(), right=True)
    starts = ends - torch.tensor([p.numel() for p in params])
    return which, c.cpu().long() - starts[which]


def _insert_canaries(optimizer, canaries: GradientCanaries, sample_rate: float, norm: float) -> torch.Tensor:
    """Wrap ``optimizer.add_noise`` (Opacus' DPOptimizer) so that each step first adds ``norm · e_j`` to
    ``p.summed_grad`` (the sum of clipped per-sample gradients) for every included canary Poisson-sampled into
    the step; returns the per-canary count of steps it joined (updated in place)."""
    params = list(optimizer.params)
    which, offset = _canary_plan(canaries, params)
    included = canaries.included.cpu()
    counts = torch.zeros(len(included), dtype=torch.long)
    gen = torch.Generator(device="cpu").manual_seed(int(canaries.seed))
    add_noise = optimizer.add_noise

    def add_noise_with_canaries() -> None:
        # one coin per canary per step, drawn for excluded canaries too: the stream does not depend on the coins
        hit = (torch.rand(len(included), generator=gen) < sample_rate) & included
        counts.add_(hit.long())
        for k in torch.unique(which[hit]).tolist():  # the parameters some sampled canary sits in
            p = params[k]
            if p.summed_grad is not None:  # offsets are distinct: one index write per canary, in place
                at = offset[hit & (which == k)].to(p.summed_grad.device)
                p.summed_grad.view(-1)[at] += norm
        add_noise()

    optimizer.add_noise = add_noise_with_canaries
    return counts


def _validate(model: nn.Module) -> list[Exception]:
    """Opacus' layer checks, in training mode (the mode DP-SGD trains in); the caller's modes are restored."""
    from opacus.validators import ModuleValidator

    modes = [(m, m.training) for m in model.modules()]
    try:
        return ModuleValidator.validate(model.train(), strict=False)
    finally:
        for m, training in modes:
            m.training = training


def check_dp_compatible(model: nn.Module, *, fix: bool = False) -> nn.Module:
    """Return ``model`` if Opacus can train it privately; otherwise fix it (``fix=True``) or raise.

    Parameters
    ----------
    model : the module to train.
    fix : replace incompatible layers with ``opacus.validators.ModuleValidator.fix`` (BatchNorm → GroupNorm,
        in-place-incompatible LSTMs → DPLSTM) and return the fixed copy.

    Returns
    -------
    nn.Module
        ``model`` itself when compatible, else the fixed copy.

    Raises
    ------
    ModelError
        Naming each incompatible layer and the fix, when ``fix`` is False or the fix did not suffice.
    """
    from opacus.validators import ModuleValidator

    errors = _validate(model)
    if not errors:
        return model
    if fix:
        fixed = ModuleValidator.fix(model)
        remaining = _validate(fixed)
        if not remaining:
            return fixed
        errors = remaining
    listed = "; ".join(str(e) for e in errors)
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    hint = (" BatchNorm mixes the samples of a batch, so per-sample gradients do not exist: replace it with "
            "GroupNorm (nn.GroupNorm(min(32, channels), channels)) or pass fix=True to let "
            "opacus.validators.ModuleValidator.fix do it." if batchnorm else
            " Replace these layers, or pass fix=True to try opacus.validators.ModuleValidator.fix.")
    raise ModelError(f"the model cannot be trained with DP-SGD by Opacus: {listed}.{hint}")


@functools.lru_cache(maxsize=256)
def noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, epochs: int, accountant: str) -> float:
    """The noise multiplier σ with which ``epochs / sample_rate`` DP-SGD steps spend exactly ``target_epsilon``.

    This is Opacus' ``get_noise_multiplier`` (a search over σ with the accountant), as
    ``PrivacyEngine.make_private_with_epsilon`` calls it, cached: the search is the slow part of a short run
    and depends only on these numbers, so reference models trained with one recipe share it.
    """
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Oo]ptimal order is the (largest|smallest) alpha.*")
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, epochs=epochs, accountant=accountant))


def _check(data: Dataset, target_epsilon: float, delta: float, epochs: int, max_grad_norm: float, lr: float,
           batch_size: int, accountant: str) -> None:
    n = len(data)
    if not (isinstance(target_epsilon, (int, float)) and math.isfinite(target_epsilon) and target_epsilon > 0):
        raise InputError(f"target_epsilon must be a finite number > 0 (e.g. 8), got {target_epsilon!r}")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise InputError(f"delta must lie in (0, 1), got {delta!r}")
    if delta >= 1 / max(n, 1):
        raise InputError(
            f"delta={delta:g} ≥ 1/n = {1 / n:g} for n={n} training records: such a δ allows publishing a record "
            f"outright; use delta < 1/n (e.g. {10 ** math.floor(math.log10(0.1 / n)):g})"
        )
    if not (isinstance(max_grad_norm, (int, float)) and math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise InputError(f"max_grad_norm (the clipping norm C) must be a finite number > 0, got {max_grad_norm!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InputError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(epochs, int) and epochs >= 1):
        raise InputError(f"epochs must be a positive integer, got {epochs!r}")
    if not (isinstance(batch_size, int) and 1 <= batch_size <= n):
        raise InputError(f"batch_size must be an integer in [1, {n}] (the expected Poisson batch), got {batch_size!r}")
    if accountant not in ACCOUNTANTS:
        raise InputError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")


def train_dp(
    model: nn.Module,
    data: Dataset,
    *,
    target_epsilon: float,
    delta: float,
    epochs: int,
    max_grad_norm: float = 1.0,
    lr: float = 0.5,
    batch_size: int = 64,
    momentum: float = 0.0,
    accountant: str = "rdp",
    fix: bool = False,
    seed: int = 0,
    gradient_canaries: GradientCanaries | None = None,
) -> DPResult:
    """DP-SGD to a target ``(ε, δ)`` with Opacus (``PrivacyEngine.make_private_with_epsilon``'s recipe).

    Records are Poisson-sampled with rate ``q = batch_size / n``; each step clips per-sample gradients to
    ``max_grad_norm``, adds Gaussian noise with the multiplier σ that Opacus solves for so that ``epochs`` epochs
    spend ``target_epsilon`` at ``delta`` (:func:`noise_multiplier`, then ``PrivacyEngine.make_private``: the two
    steps of ``make_private_with_epsilon``, with the search cached), and takes an SGD step. Sampling and noise
    come from generators seeded by ``seed``; the global RNG is neither read nor advanced.

    Parameters
    ----------
    model : the module to train (trained in place unless ``fix`` replaces layers).
    data : the private training set.
    target_epsilon, delta : the privacy budget; ``delta`` must be below ``1 / len(data)``.
    epochs : passes over the data (the accountant's step count is ``epochs / q``).
    max_grad_norm : the clipping norm C.
    lr, momentum : SGD's step size and momentum.
    batch_size : the expected Poisson batch size.
    accountant : "rdp" (default: fast, an upper bound), "prv" (tighter, slower to solve for σ) or "gdp".
    fix : let :func:`check_dp_compatible` replace incompatible layers instead of raising.
    seed : seeds the Poisson sampling and the noise.
    gradient_canaries : white-box audit canaries (:class:`GradientCanaries`): each included canary joins each
        step with probability q and adds ``max_grad_norm`` to its coordinate of the summed clipped gradient
        before the noise. The reported ε is unchanged, and it covers the canaries: each is one more record whose
        clipped gradient has norm C and which is Poisson-sampled with rate q, exactly what the accountant's
        analysis of the subsampled Gaussian mechanism assumes of every record (for arbitrary, even adversarial,
        gradients of norm ≤ C), and q, σ and the step count do not depend on the number of records. So the
        recipe run on the data plus the included canaries is (ε, δ)-DP with respect to each canary's inclusion,
        which is what the one-run audit of :func:`adverse.privacy.audit_dp` tests.

    Returns
    -------
    DPResult
        The model and the accountant's ε, with σ, q and the step count (and, with canaries, ``canary_steps``:
        the steps each canary joined).

    References
    ----------
    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Algorithm 1.
    Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in PyTorch", 2021.
    """
    from opacus import PrivacyEngine

    _check(data, target_epsilon, delta, epochs, max_grad_norm, lr, batch_size, accountant)
    model = check_dp_compatible(model, fix=fix)
    device = next((p.device for p in model.parameters()), data.x.device)
    dataset = torch.utils.data.TensorDataset(data.x.to(device), data.y.to(device))
    if gradient_canaries is not None and not isinstance(gradient_canaries, GradientCanaries):
        raise InputError("gradient_canaries must be an adverse.defenses.dp.GradientCanaries or None, got "
                         f"{type(gradient_canaries).__name__}")
    if gradient_canaries is not None:
        _canary_plan(gradient_canaries, [p for p in model.parameters() if p.requires_grad])
    sampling = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.Generator(device=device).manual_seed(int(seed) + 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, generator=sampling)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG turned off.*")
        warnings.filterwarnings("ignore", message=".*[Oo]ptimal order is the (largest|smallest) alpha.*")
        warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook is firing.*")
        engine = PrivacyEngine(accountant=accountant)
        rate = 1 / len(loader)
        sigma = noise_multiplier(float(target_epsilon), float(delta), rate, epochs, accountant)
        hooks, optimizer, loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma,
            max_grad_norm=float(max_grad_norm), noise_generator=noise, poisson_sampling=True, wrap_model=False,
        )
        counts = (None if gradient_canaries is None else
                  _insert_canaries(optimizer, gradient_canaries, rate, float(max_grad_norm)))
        try:
            model.train()
            for _ in range(epochs):
                for xb, yb in loader:
                    optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(model(xb), yb).backward()
                    optimizer.step()
            epsilon = float(engine.get_epsilon(delta))
        finally:
            optimizer.zero_grad(set_to_none=True)
            hooks.cleanup()
    steps = sum(s for _, _, s in engine.accountant.history)
    # the guarantee travels with the model, so a recipe returning only the model still states its ε
    # (adverse.privacy.audit_dp reports it beside the measured lower bound)
    model.dp_epsilon, model.dp_delta = epsilon, float(delta)
    return DPResult(
        model=model.eval(), epsilon=epsilon, delta=float(delta), target_epsilon=float(target_epsilon),
        noise_multiplier=float(optimizer.noise_multiplier), max_grad_norm=float(max_grad_norm),
        sample_rate=float(engine.accountant.history[0][1]), steps=int(steps), accountant=accountant, seed=int(seed),
        canary_steps=counts,
    )


class DPRecipe:
    """A DP-SGD training recipe ``recipe(dataset, seed) -> model`` (the convention of :func:`adverse.zoo.recipe`):
    an :class:`~adverse.zoo.MLP` on the flattened inputs trained by :func:`train_dp` to ``(epsilon, delta)``.

    ``epsilon`` and ``delta`` are the target guarantee; each returned model carries its accountant's
    ``dp_epsilon`` and ``dp_delta``. Picklable, so executors can ship it. Used by
    :func:`adverse.privacy.audit_dp` and its benchmark.

    Parameters
    ----------
    epsilon, delta : the target ``(ε, δ)`` (``delta`` below ``1 / len(dataset)``).
    epochs, lr, batch_size, max_grad_norm, accountant : as in :func:`train_dp`.
    hidden : the MLP's hidden widths.
    """

    @validated(epsilon=POSITIVE, delta=Rule("real", low=0.0, high=1.0, open_low=True, open_high=True),
               max_grad_norm=POSITIVE)
    def __init__(self, epsilon: float, delta: float = 1e-5, *, epochs: int = 10, lr: float = 0.5,
                 batch_size: int = 64, max_grad_norm: float = 1.0, accountant: str = "rdp",
                 hidden: tuple[int, ...] = (128, 64)) -> None:
        self.epsilon, self.delta = float(epsilon), float(delta)
        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)
        self.max_grad_norm, self.accountant, self.hidden = float(max_grad_norm), accountant, tuple(hidden)

    def __repr__(self) -> str:
        return (f"DPRecipe(epsilon={self.epsilon:g}, delta={self.delta:g}, epochs={self.epochs}, lr={self.lr:g}, "
                f"batch_size={self.batch_size}, max_grad_norm={self.max_grad_norm:g})")

    def _model(self, data: Dataset, seed: int) -> nn.Module:
        from ..zoo import MLP

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return MLP(int(data.x[0].numel()), data.num_classes, self.hidden)

    def _train(self, data: Dataset, seed: int, canaries: GradientCanaries | None = None) -> DPResult:
        from ..zoo import TRAIN_THREADS, fixed_threads

        model = self._model(data, seed)
        with fixed_threads(TRAIN_THREADS):
            return train_dp(model, data, target_epsilon=self.epsilon, delta=self.delta, epochs=self.epochs,
                            max_grad_norm=self.max_grad_norm, lr=self.lr, batch_size=min(self.batch_size, len(data)),
                            accountant=self.accountant, seed=int(seed), gradient_canaries=canaries)

    def __call__(self, data: Dataset, seed: int) -> nn.Module:
        return self._train(data, seed).model

    @validated
    def gradient_canary_space(self, data: Dataset) -> int:
        """The number of trainable coordinates of the model trained on ``data``: gradient canaries sit at distinct
        flat indices below it (the order of ``model.parameters()``)."""
        return sum(p.numel() for p in self._model(data, 0).parameters() if p.requires_grad)

    @validated(seed=Rule("int", low=0), canary_seed=Rule("int", low=0))
    def train_with_gradient_canaries(self, data: Dataset, seed: int, coordinates: torch.Tensor,
                                     included: torch.Tensor, canary_seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
        """Train as ``self(data, seed)`` with white-box Dirac gradient canaries, and score them.

        Canary ``i`` adds ``max_grad_norm`` to coordinate ``coordinates[i]`` of the summed clipped gradient of
        every step it is Poisson-sampled into, when ``included[i]`` (:class:`GradientCanaries`, seeded by
        ``canary_seed``). Its score is the total movement of its coordinate against that gradient, ``initial −
        final`` (= the sum over steps of −(update along the coordinate), since plain SGD's updates telescope):
        an included canary pushes the coordinate down by ``lr · C / batch_size`` per step it joins, an excluded
        one only sees the data's gradient and the noise. This is the white-box score of Steinke, Nasr &
        Jagielski 2023 (§6) for Dirac canaries. The model's ``dp_epsilon`` is the accountant's, which covers the
        canaries (see :func:`train_dp`).

        Returns
        -------
        (model, scores)
            The trained model and a float64 tensor of the m scores, higher = included.
        """
        canaries = GradientCanaries(coordinates, included, int(canary_seed))
        model = self._model(data, seed)
        params = [p for p in model.parameters() if p.requires_grad]
        _canary_plan(canaries, params)
        initial = torch.cat([p.detach().flatten() for p in params])[coordinates].double()
        result = self._train(data, seed, canaries)
        final = torch.cat([p.detach().flatten() for p in result.model.parameters() if p.requires_grad])
        return result.model, initial - final[coordinates].double()
