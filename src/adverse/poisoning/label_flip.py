"""Label flipping: the attacker controls the labels of a fraction of the training set, not the inputs."""

from __future__ import annotations

import torch

from ..data import Dataset
from ..errors import InputError
from ..validation import validated
from ._common import budget, check_class, check_data, check_rate, select
from .data import PoisonedData

MODES = ("random", "targeted")


@validated
def label_flip(
    data: Dataset, *, rate: float = 0.1, mode: str = "random", source: int | None = None, target: int | None = None,
    seed: int = 0,
) -> PoisonedData:
    """Flip training labels, randomly (an availability attack) or from class ``source`` to class ``target``.

    * ``mode="random"``: ``round(rate · n)`` samples drawn uniformly get a label drawn uniformly from the other
      ``C − 1`` classes. The correct label stays the plurality while ``rate < (C − 1) / C``, so accuracy
      degrades gracefully.
    * ``mode="targeted"``: ``round(rate · n_source)`` samples of class ``source`` are relabelled ``target``
      (``rate`` is the flipped share of the source class); past one half the network learns source → target.

    Parameters
    ----------
    data : the clean training set.
    rate : the budget, a fraction in [0, 1] (of the whole set for "random", of the source class for "targeted").
    mode : "random" or "targeted".
    source, target : the classes a → b of a targeted flip (both required there, ignored for "random").
    seed : which samples are flipped and, for "random", to which labels.

    Returns
    -------
    PoisonedData with ``x`` unchanged and no trigger.

    References
    ----------
    Biggio, Nelson & Laskov, "Support Vector Machines Under Adversarial Label Noise", ACML 2011;
    Xiao, Xiao & Eckert, "Adversarial Label Flips Attack on Support Vector Machines", ECAI 2012.
    """
    check_data(data)
    rate = check_rate(rate)
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    y = data.y.clone()
    if mode == "random":
        if data.num_classes < 2:
            raise InputError("random label flipping needs at least 2 classes")
        idx = select(torch.arange(len(data)), budget(rate, len(data)), seed, f"label_flip at rate {rate}")
        g = torch.Generator().manual_seed(int(seed) + 1)
        shift = torch.randint(1, data.num_classes, (idx.numel(),), generator=g)  # uniform over the other classes
        y[idx] = (data.y[idx] + shift) % data.num_classes
        params = {"rate": rate, "mode": mode, "seed": seed}
    else:
        if source is None or target is None:
            raise InputError("targeted label flipping needs source= and target= classes (a -> b)")
        source = check_class(source, data.num_classes, "source")
        target = check_class(target, data.num_classes, "target")
        if source == target:
            raise InputError(f"source and target are both class {source}; a flip needs two different classes")
        pool = (data.y == source).nonzero().flatten()
        idx = select(pool, budget(rate, pool.numel()), seed, f"label_flip {source}->{target} at rate {rate}")
        y[idx] = target
        params = {"rate": rate, "mode": mode, "source": source, "target": target, "seed": seed}
    return PoisonedData(data.x.clone(), y, idx, "label_flip", params, data.num_classes, data.y.clone(), data.bounds)
