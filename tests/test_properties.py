"""Properties every evasion attack keeps, for every norm it supports (DESIGN.md, "Contracts that every module keeps").

For random small problems: outputs inside the threat model and the bounds, ``norms`` that are the real norms,
``success`` that is exactly "the output is adversarial", seeded determinism without the global RNG, the
caller's model and tensors left exactly as found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from conftest import TinyNet, examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import adverse.evasion as ev
from adverse.threat import lp_norm

PROPS = settings(max_examples=examples(6), deadline=None, suppress_health_check=[HealthCheck.too_slow])
NUM_CLASSES = 4


@dataclass(frozen=True)
class Config:
    attack: str
    norm: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    fixed_budget: bool = True  # False: a minimal-norm attack (no eps)
    target: bool = False  # pass explicit target classes: success means "classified as the target"
    images: bool = False  # the attack needs (n, c, h, w) images

    @property
    def id(self) -> str:
        extra = "-".join(f"{k}={v}" for k, v in self.kwargs.items() if k not in ("steps", "binary_search_steps"))
        return "-".join(filter(None, [self.attack, self.norm, extra, "target" if self.target else ""]))


CONFIGS = [
    *[Config("fgsm", n) for n in ("linf", "l2", "l1")],
    *[Config("fgsm", n, target=True) for n in ("linf", "l2")],
    *[Config("bim", n, {"steps": 3}) for n in ("linf", "l2", "l1")],
    *[Config("pgd", n, {"steps": 3, "restarts": 2}) for n in ("linf", "l2", "l1")],
    Config("pgd", "linf", {"steps": 3, "early_stop": False}),
    Config("pgd", "l2", {"steps": 3}, target=True),
    *[Config("mifgsm", n, {"steps": 3}) for n in ("linf", "l2", "l1")],
    *[Config("apgd", n, {"steps": 5, "loss": loss}) for n in ("linf", "l2", "l1") for loss in ("ce", "dlr")],
    *[Config("apgd", n, {"steps": 5, "targeted": True, "n_target_classes": 2}) for n in ("linf", "l2", "l1")],
    Config("apgd", "linf", {"steps": 5, "restarts": 2, "early_stop": False}),
    Config("apgd", "l2", {"steps": 5, "loss": "ce"}, target=True),
    Config("cw_l2", "l2", {"steps": 5, "binary_search_steps": 2}, fixed_budget=False),
    Config("cw_l2", "l2", {"steps": 5, "binary_search_steps": 2}, fixed_budget=False, target=True),
    *[Config("deepfool", n, {"norm": n, "steps": 5}, fixed_budget=False) for n in ("l2", "linf")],
    *[Config("fmn", n, {"norm": n, "steps": 5}, fixed_budget=False) for n in ("l1", "l2", "linf")],
    Config("fmn", "l2", {"norm": "l2", "steps": 5}, fixed_budget=False, target=True),
    *[Config("fab", n, {"norm": n, "steps": 5}, fixed_budget=False) for n in ("linf", "l2", "l1")],
    Config("fab", "linf", {"steps": 5, "targeted": True, "n_target_classes": 2}),
    Config("fab", "l2", {"steps": 5}, target=True),
    # score- and decision-based attacks (they only query the model) and the transfer attack
    *[Config("square", n, {"max_queries": 30}, images=True) for n in ("linf", "l2")],
    Config("square", "linf", {"max_queries": 30}, target=True, images=True),
    *[Config("simba", n, {"max_queries": 30}) for n in ("linf", "l2")],
    Config("simba", "l2", {"max_queries": 30, "basis": "dct"}, target=True, images=True),
    *[Config("nes", n, {"max_queries": 40, "samples": 4}) for n in ("linf", "l2")],
    Config("nes", "linf", {"max_queries": 40, "samples": 4, "method": "spsa"}, target=True),
    *[Config("hopskipjump", n, {"norm": n, "max_queries": 60, "steps": 2, "init_evals": 5, "max_evals": 10},
             fixed_budget=False) for n in ("l2", "linf")],
    Config("hopskipjump", "l2", {"max_queries": 60, "steps": 2, "init_evals": 5, "max_evals": 10}),
    *[Config("transfer", n, {"steps": 3}) for n in ("linf", "l2", "l1")],
    Config("transfer", "linf", {"steps": 3, "vmi_samples": 2}, target=True),
    Config("transfer", "linf", {"steps": 3, "diversity_prob": 0.7, "kernel_size": 3}, images=True),
]

QUERY_ATTACKS = ("square", "simba", "nes", "hopskipjump")
EPS = {"linf": [0.02, 0.1, 0.3], "l2": [0.1, 0.5, 2.0], "l1": [0.5, 2.0, 6.0]}


# ----------------------------------------------------------------------------------------------- problems
class MLP(nn.Module):
    """An MLP on odd-shaped (n, 3, 5) inputs with a frozen-able first layer and BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(15, 12)
        self.bn = nn.BatchNorm1d(12)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(12, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x.flatten(1))))))


def make_model(arch: str, seed: int, dtype: torch.dtype) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = TinyNet(NUM_CLASSES) if arch == "tiny" else MLP()
        with torch.no_grad():  # non-trivial running statistics
            net.bn.running_mean.uniform_(-0.1, 0.1)
            net.bn.running_var.uniform_(0.5, 1.5)
            net.bn.num_batches_tracked.fill_(7)
    return net.to(dtype)


@dataclass
class Problem:
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    eps: float | torch.Tensor | None
    bounds: tuple[float, float]
    seed: int


@st.composite
def problems(draw, cfg: Config) -> Problem:
    arch = draw(st.sampled_from(["tiny"] if cfg.images else ["tiny", "mlp"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    n = draw(st.integers(1, 4))
    bounds = draw(st.sampled_from([(0.0, 1.0), (-1.0, 2.0)]))
    seed = draw(st.integers(0, 2**16))
    model = make_model(arch, seed, dtype)
    g = torch.Generator().manual_seed(seed)
    lo, hi = bounds
    shape = (1, 6, 6) if arch == "tiny" else (3, 5)
    x = lo + (hi - lo) * torch.rand((n, *shape), generator=g, dtype=torch.float64)
    if draw(st.booleans()):  # some coordinates on the bounds
        x = x.clamp(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo))
        x = torch.where(x <= lo + 0.1 * (hi - lo), lo, torch.where(x >= hi - 0.1 * (hi - lo), hi, x))
    x = x.to(dtype)
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    # Mostly correctly classified inputs, sometimes a wrong label (a clean error counts as a success).
    wrong = torch.rand(n, generator=g) < 0.25
    y = torch.where(wrong, (pred + 1) % NUM_CLASSES, pred)
    target = (y + 1 + torch.randint(0, NUM_CLASSES - 1, (n,), generator=g)) % NUM_CLASSES if cfg.target else None
    eps = None
    if cfg.fixed_budget:
        base = draw(st.sampled_from(EPS[cfg.norm])) * (hi - lo)
        if draw(st.booleans()):  # per-sample budgets, one of them zero
            eps = base * torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
            eps[0] = 0.0
        else:
            eps = base
    # The caller's model may be in training mode, with a frozen layer and mixed submodule modes.
    if draw(st.booleans()):
        model.train()
        if draw(st.booleans()):
            model.drop.eval()
    first = model.conv if arch == "tiny" else model.fc1
    if draw(st.booleans()):
        first.weight.requires_grad_(False)
    return Problem(model, x, y, target, eps, bounds, draw(st.integers(0, 1000)))


def run(cfg: Config, p: Problem, model: nn.Module | None = None):
    fn = getattr(ev, cfg.attack)
    kw = dict(cfg.kwargs)
    if cfg.fixed_budget:
        kw["eps"] = p.eps
        kw["norm"] = cfg.norm
    if cfg.target:
        kw["target"] = p.target
    model = p.model if model is None else model
    if cfg.attack == "transfer":  # the model is both the surrogate and the attacked model
        return fn(model, model, p.x, p.y, bounds=p.bounds, seed=p.seed, **kw)
    return fn(model, p.x, p.y, bounds=p.bounds, seed=p.seed, **kw)


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "flags": {k: v.requires_grad for k, v in model.named_parameters()},
        "modes": {k: m.training for k, m in model.named_modules()},
        "grads": {k: v.grad for k, v in model.named_parameters()},
    }


def assert_untouched(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["flags"] == before["flags"], "requires_grad flags changed"
    assert after["modes"] == before["modes"], "train/eval modes changed"
    assert all(g is None for g in after["grads"].values()), "a .grad was left on a parameter"
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"{k} changed"


def ball_tolerance(x: torch.Tensor, eps: torch.Tensor, bounds: tuple[float, float], norm: str) -> torch.Tensor:
    """1e-6, plus in float32 what the dtype cannot resolve: each stored coordinate of ``x_adv`` may be off by half
    a unit in the last place of the largest input value, and ``eps`` itself by a few units of its own."""
    if x.dtype == torch.float64:
        return torch.full_like(eps, 1e-6)
    unit = torch.finfo(x.dtype).eps
    half_ulp = torch.full((1, x[0].numel()), 0.5 * unit * max(abs(bounds[0]), abs(bounds[1])), dtype=torch.float64)
    return 1e-6 + 4 * unit * eps + lp_norm(half_ulp, norm)


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted labels in eval mode (the mode attacks run the model in); the model's modes are restored."""
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            return model.eval()(x).argmax(1)
    finally:
        for m, t in modes.items():
            m.training = t


def adversarial(cfg: Config, p: Problem, x_adv: torch.Tensor) -> torch.Tensor:
    """What success means: classified as the target, or (untargeted and APGD-T) not as the label."""
    pred = predict(p.model, x_adv)
    return pred == p.target if cfg.target else pred != p.y


# ----------------------------------------------------------------------------------------------- the properties
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.id)
@PROPS
@given(data=st.data())
def test_attack_properties(cfg: Config, data) -> None:
    p = data.draw(problems(cfg))
    x0, y0 = p.x.clone(), p.y.clone()
    t0 = None if p.target is None else p.target.clone()
    eps0 = p.eps.clone() if torch.is_tensor(p.eps) else p.eps
    before = snapshot(p.model)

    torch.manual_seed(1)
    rng = torch.get_rng_state()
    r = run(cfg, p)
    assert torch.equal(torch.get_rng_state(), rng), "the attack used the global RNG"

    # The caller's tensors and model are exactly as they were.
    assert torch.equal(p.x, x0) and torch.equal(p.y, y0)
    assert t0 is None or torch.equal(p.target, t0)
    assert not torch.is_tensor(eps0) or torch.equal(p.eps, eps0)
    assert_untouched(p.model, before)

    # Shapes, dtype, device.
    n = p.x.shape[0]
    assert r.x_adv.shape == p.x.shape and r.x_adv.dtype == p.x.dtype and r.x_adv.device == p.x.device
    assert r.success.shape == (n,) and r.success.dtype == torch.bool
    assert r.norms.shape == (n,) and r.clean_correct.shape == (n,)
    assert not r.x_adv.requires_grad

    # Inside the bounds, and inside the ball for fixed-budget attacks.
    lo, hi = p.bounds
    assert float(r.x_adv.min()) >= lo - 1e-6 and float(r.x_adv.max()) <= hi + 1e-6
    real = lp_norm(r.x_adv.double() - p.x.double(), cfg.norm)
    if cfg.fixed_budget:
        eps = torch.as_tensor(p.eps, dtype=torch.float64).expand(n)
        assert bool((real <= eps + ball_tolerance(p.x, eps, p.bounds, cfg.norm)).all()), (real - eps).max()
        assert r.eps == pytest.approx(float(eps.max()))
    else:
        assert r.eps is None
    # norms are the real norms
    torch.testing.assert_close(r.norms.double(), real, rtol=1e-5, atol=1e-6)
    assert r.norm == cfg.norm

    # success ⇔ the output is adversarial; robust accuracy follows.
    assert torch.equal(r.success, adversarial(cfg, p, r.x_adv))
    assert r.robust_accuracy == pytest.approx(1.0 - r.success.double().mean().item())
    clean = predict(p.model, p.x)
    assert torch.equal(r.clean_correct, clean == p.y)
    already = (clean == p.target) if cfg.target else (clean != p.y)
    assert bool(r.success[already].all())  # clean errors (or hits of the target) count as successes
    if not cfg.fixed_budget:  # ... with a zero perturbation
        assert bool((r.norms[already] == 0).all())

    # The same seed gives the same tensors, whatever the global RNG holds.
    torch.manual_seed(12345)
    r2 = run(cfg, p)
    assert torch.equal(r.x_adv, r2.x_adv)
    assert torch.equal(r.success, r2.success)
    assert torch.equal(r.norms, r2.norms)
    assert r.forwards == r2.forwards and r.backwards == r2.backwards
    assert_untouched(p.model, before)


# ----------------------------------------------------------------------------------------------- budget accounting
class Recorder(nn.Module):
    """Counts the rows that really pass through a model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.id)
def test_forwards_count_the_real_passes(cfg: Config) -> None:
    model = make_model("tiny", 3, torch.float32)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 6, 6, generator=g)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    p = Problem(model, x, y, (y + 1) % NUM_CLASSES if cfg.target else None,
                {"linf": 0.05, "l2": 0.5, "l1": 2.0}[cfg.norm] if cfg.fixed_budget else None, (0.0, 1.0), 0)
    rec = Recorder(model)
    r = run(cfg, p, model=rec)
    assert r.seconds > 0
    if cfg.attack in QUERY_ATTACKS:  # only queries, each counted once
        assert r.queries == rec.rows and r.forwards == r.backwards == 0
        return
    if cfg.attack == "transfer":  # surrogate passes, then one clean and one adversarial query per sample
        assert r.forwards + r.queries == rec.rows and r.queries == 2 * x.shape[0]
    else:
        assert r.forwards == rec.rows and r.queries == 0
    # FAB differentiates every class: K backward passes per Jacobian
    assert 0 < r.backwards <= (NUM_CLASSES if cfg.attack == "fab" else 1) * r.forwards
