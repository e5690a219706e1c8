"""Validation, sample selection and feature extraction shared by the poisoning attacks and the poison defenses."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..data import Dataset
from ..errors import InputError
from ..evasion._core import check_inputs, check_labels


def check_data(data: Dataset) -> Dataset:
    """Validate a :class:`~adverse.data.Dataset`: finite inputs inside its bounds, integer labels in range."""
    if not isinstance(data, Dataset):
        raise InputError(
            f"data must be an adverse.data.Dataset, got {type(data).__name__}; wrap tensors with "
            "adverse.data.Dataset(x, y, name, num_classes, bounds)"
        )
    check_inputs(data.x, data.y, data.bounds)
    check_labels(data.y, data.num_classes)
    return data


def check_rate(rate: float, name: str = "rate") -> float:
    """A fraction in [0, 1]; anything else raises :class:`InputError`."""
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number in [0, 1], got {rate!r}") from None
    if not (0.0 <= r <= 1.0) or math.isnan(r):
        raise InputError(f"{name} must lie in [0, 1] (a fraction of the data, 0.05 for 5 %), got {rate!r}")
    return r


def check_class(c: int, num_classes: int, name: str = "target") -> int:
    """A class index that exists; anything else raises :class:`InputError`."""
    if isinstance(c, bool) or not isinstance(c, (int, torch.Tensor)) or (torch.is_tensor(c) and c.numel() != 1):
        raise InputError(f"{name} must be an integer class index, got {c!r}")
    c = int(c)
    if not 0 <= c < num_classes:
        raise InputError(f"{name} class {c} does not exist: choose a class in [0, {num_classes - 1}]")
    return c


def check_eps(eps: float, bounds: tuple[float, float]) -> float:
    """An L∞ budget in input units: finite, ≥ 0 and not wider than the input range."""
    e = float(eps)
    if not (0.0 <= e <= bounds[1] - bounds[0]) or math.isnan(e):
        raise InputError(f"eps must lie in [0, {bounds[1] - bounds[0]}] (input units, e.g. 8/255), got {eps!r}")
    return e


def select(pool: torch.Tensor, count: int, seed: int, what: str) -> torch.Tensor:
    """``count`` distinct indices drawn uniformly from ``pool`` with a private generator, sorted."""
    if count > pool.numel():
        raise InputError(f"{what}: need {count} samples but only {pool.numel()} are eligible; lower the rate")
    g = torch.Generator().manual_seed(int(seed))
    pick = pool[torch.randperm(pool.numel(), generator=g)[:count]]
    return pick.sort().values


def budget(rate: float, n: int) -> int:
    """The number of samples a fraction ``rate`` of ``n`` allows (rounded to the nearest integer)."""
    return round(rate * n)


def last_linear(model: nn.Module) -> nn.Module:
    """The model's last ``nn.Linear``: its input is the "last hidden layer" the detection papers use."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError("the model has no nn.Linear layer; pass layer= naming the module whose input to use")
    return linears[-1]


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    """``layer`` as a module: ``None`` → the last ``nn.Linear``; a string → ``model.get_submodule(layer)``."""
    if layer is None:
        return last_linear(model)
    if isinstance(layer, nn.Module):
        return layer
    from ..models import base_model

    model = base_model(model)  # names are the user's model's own, not those inside adverse's logits wrapper
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise InputError(f"the model has no module {layer!r}; choose one of {names}") from None


def features(model: nn.Module, x: torch.Tensor, layer: str | nn.Module | None = None, *,
             batch_size: int = 512, grad: bool = False) -> torch.Tensor:
    """The input of ``layer`` (default: the last ``nn.Linear``, i.e. the penultimate activations), flattened.

    With ``grad=True`` the graph to ``x`` is kept (feature collision needs it); otherwise no graph is built.
    The caller is responsible for the model's mode (use :func:`adverse.models.attack_mode`).
    """
    module = resolve_layer(model, layer)
    out: list[torch.Tensor] = []

    def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        out.append(inputs[0].flatten(1))

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.set_grad_enabled(grad):
            for i in range(0, x.shape[0], batch_size):
                model(x[i : i + batch_size])
    finally:
        handle.remove()
    return torch.cat(out)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels of ``x`` in eval mode, without gradients; the model's state is restored."""
    from ..models import as_classifier, attack_mode

    model = as_classifier(model)  # a ModelOutput, a dict with logits or a tuple: its logits
    with attack_mode(model), torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


def as_positions(position: str | Sequence, size: int, shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of the trigger patch(es): "bottom-right" / "top-left" / ... / "corners" (all four),
    a (row, col) pair, or a list of them."""
    h, w = shape
    named = {"top-left": (0, 0), "top-right": (0, w - size), "bottom-left": (h - size, 0),
             "bottom-right": (h - size, w - size)}
    if isinstance(position, str):
        if position == "corners":
            return list(named.values())
        if position not in named:
            raise InputError(f"unknown trigger position {position!r}; use one of {sorted(named)}, 'corners' "
                             "or a (row, col) pair")
        return [named[position]]
    pos = list(position)
    if len(pos) == 2 and all(isinstance(p, int) for p in pos):
        return [(int(pos[0]), int(pos[1]))]
    return [p for item in pos for p in as_positions(item, size, shape)]
