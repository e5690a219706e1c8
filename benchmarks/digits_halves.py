"""The data split the poison-defense benchmarks share: the digits training split, the first half of the test split
(the defender's clean data) and its second half (held out for the metrics)."""

from __future__ import annotations

from adverse.data import Dataset, digits


def digits_halves() -> tuple[Dataset, Dataset, Dataset, Dataset]:
    """(train, test, defender, held): ``defender`` and ``held`` are the two halves of ``test``, in order."""
    train, test = digits("train"), digits("test")
    half = len(test) // 2
    return (train, test, Dataset(test.x[:half], test.y[:half], "defender", 10),
            Dataset(test.x[half:], test.y[half:], "held-out", 10))
