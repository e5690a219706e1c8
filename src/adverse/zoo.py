"""Small reference models with seeded training recipes, for the demo audit, the tests and the benchmarks.

Trained models are cached as safetensors under the user's cache directory (``$ADVERSE_CACHE`` or the
platform's cache folder); nothing is written at import, and a cache entry is written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset
from .errors import InputError, ModelError


class SmallCNN(nn.Module):
    """Two 3×3 convolutions, a max-pool and two linear layers; sized for 8×8 digits by default."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 8, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * (image_size // 2) ** 2, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """A multilayer perceptron on flattened inputs."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (128, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_classifier(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
    perturb: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> nn.Module:
    """Train ``model`` with Adam on cross-entropy; deterministic for a given ``seed``.

    ``perturb(model, x, y) -> x'`` replaces each batch by a perturbed one (adversarial training).
    Returns the model in eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(data)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            b = order[i : i + batch_size]
            xb, yb = data.x[b], data.y[b]
            if perturb is not None:
                xb = perturb(model, xb, yb)
            model.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


def pgd_perturb(eps: float, steps: int = 10, norm: str = "linf") -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Madry et al.'s inner maximization for adversarial training: PGD without early stop."""
    counter = iter(range(1 << 62))

    def perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from .evasion import pgd

        r = pgd(model, x, y, eps=eps, norm=norm, steps=steps, early_stop=False, seed=next(counter))
        return r.x_adv

    return perturb


def cache_dir() -> Path:
    """Where trained models are cached: ``$ADVERSE_CACHE`` or the user's cache folder (created on first use)."""
    env = os.environ.get("ADVERSE_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("adverse"))


# Every recipe trains on TRAIN_THREADS intra-op threads: float sums are ordered differently for other thread
# counts, so the same seed would give other weights (and other test numbers) on a machine with more cores.
TRAIN_THREADS = 1
RECIPES: dict[str, dict] = {
    "digits-cnn": {"arch": "SmallCNN", "epochs": 30, "lr": 1e-3, "seed": 0, "adversarial": None,
                   "threads": TRAIN_THREADS},
    "digits-cnn-at": {"arch": "SmallCNN", "epochs": 40, "lr": 1e-3, "seed": 0,
                      "adversarial": {"eps": 0.2, "steps": 10, "norm": "linf"}, "threads": TRAIN_THREADS},
    "digits-mlp": {"arch": "MLP", "epochs": 40, "lr": 1e-3, "seed": 0, "adversarial": None,
                   "threads": TRAIN_THREADS},
}


@contextlib.contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` intra-op threads, then restore the caller's count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _build(arch: str) -> nn.Module:
    return SmallCNN() if arch == "SmallCNN" else MLP(64, 10)


def recipe(name: str = "digits-cnn") -> Callable[[Dataset, int], nn.Module]:
    """The training recipe of a zoo model as ``train_fn(dataset, seed) -> model``: the same architecture and
    training as :func:`pretrained` (which is ``recipe(name)(digits("train"), RECIPES[name]["seed"])``), for audits
    that retrain the model (reference models for membership inference, poisoned retraining).

    The weights are initialized under ``torch.manual_seed(seed)`` inside a forked RNG, so the caller's global
    random state is untouched.
    """
    if name not in RECIPES:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(RECIPES)}")
    return _Recipe(name)


def train_with(recipe: Callable[[Dataset, int], nn.Module], data: Dataset, seed: int) -> nn.Module:
    """``recipe(data, seed)``, checked to return the trained ``torch.nn.Module`` (raises :class:`ModelError`
    naming what it returned instead)."""
    model = recipe(data, seed)
    if not isinstance(model, nn.Module):
        raise ModelError(f"the training recipe returned {type(model).__name__}, not a torch.nn.Module; a recipe is "
                         "recipe(dataset, seed) -> trained model (see adverse.zoo.recipe, adverse.poisoning.trainer)")
    return model


class _Recipe:
    """A picklable ``train_fn(dataset, seed)`` for a zoo recipe (executors such as Ray ship it to workers)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"adverse.zoo.recipe({self.name!r})"

    def __call__(self, data: Dataset, seed: int) -> nn.Module:
        r = RECIPES[self.name]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _build(r["arch"])
        adv = r["adversarial"]
        perturb = pgd_perturb(adv["eps"], adv["steps"], adv["norm"]) if adv else None
        with fixed_threads(r.get("threads", TRAIN_THREADS)):
            return train_classifier(model, data, epochs=r["epochs"], lr=r["lr"], seed=seed, perturb=perturb)


def training_seed(name: str) -> int:
    """The seed :func:`pretrained` trains ``name`` with: the recipe's, or ``$ADVERSE_ZOO_SEED`` when set (to
    measure how much tests and benchmarks depend on the training seed: ``benchmarks/seed_margins.sh``)."""
    env = os.environ.get("ADVERSE_ZOO_SEED")
    if env is None:
        return int(RECIPES[name]["seed"])
    if not env.isdigit():
        raise InputError(f"ADVERSE_ZOO_SEED must be a whole number ≥ 0, got {env!r}; unset it to use the recipes' seeds")
    return int(env)


def pretrained(name: str = "digits-cnn", *, cache: bool = True, verbose: bool = False) -> nn.Module:
    """A model from :data:`RECIPES`, trained on the bundled digits (train split) or loaded from the cache.

    ``digits-cnn``: undefended SmallCNN. ``digits-cnn-at``: SmallCNN with PGD adversarial training
    (L∞, eps 0.2, 10 steps; Madry et al. 2018). ``digits-mlp``: undefended MLP.
    """
    from safetensors.torch import load_file, save_file

    from .data import digits

    if name not in RECIPES:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(RECIPES)}")
    recipe = dict(RECIPES[name], seed=training_seed(name))
    key = hashlib.sha256(json.dumps([name, recipe, torch.__version__.split("+")[0]], sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / f"{name}-{key}.safetensors"
    if cache and path.is_file():
        with torch.random.fork_rng(devices=[]):  # seeded initialization without touching the caller's RNG
            torch.manual_seed(recipe["seed"])
            model = _build(recipe["arch"])
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        except Exception:  # a damaged cache entry (a full disk, a killed write by another tool): train again
            if verbose:
                print(f"the cached {name} at {path} is damaged; training it again")
    if verbose:
        print(f"training {name} (cached afterwards at {path})")
    model = _Recipe(name)(digits("train"), recipe["seed"])
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
        os.replace(tmp, path)
    return model.eval()
