"""The poisoning suite: BadNets at 0 % and 5 % on digits with a fast SmallCNN recipe, activation clustering and
spectral signatures at 5 % with removal and retraining, the representation layer, JSON-readiness and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from adverse.data import digits
from adverse.errors import InputError, ModelError
from adverse.evaluation.poisoning_suite import poisoning_suite, representation_layer
from adverse.poisoning import trainer
from adverse.zoo import MLP, SmallCNN

EPOCHS = 8  # enough for a 97 % BadNets backdoor on digits at 5 % (one thread: ~5 s per training)


@pytest.fixture(scope="module")
def data():
    return digits("train"), digits("test")


@pytest.fixture(scope="module")
def suite(data):
    calls = []
    out = poisoning_suite(trainer(SmallCNN, epochs=EPOCHS), *data, rates=(0.0, 0.05), detect_rate=0.05,
                          progress=lambda *a: calls.append(a))
    return out, calls


def test_backdoor_grows_with_the_rate(suite):
    out, calls = suite
    clean, poisoned = out["attacks"]
    assert clean["poison_rate"] == 0.0 and clean["n_poison"] == 0 and clean["attack_success_rate"] <= 0.1
    assert poisoned["poison_rate"] == 0.05 and poisoned["n_poison"] == 63 and poisoned["attack_success_rate"] >= 0.8
    assert clean["clean_accuracy"] >= 0.9 and poisoned["clean_accuracy"] >= 0.9
    assert len(calls) == 5 and calls[-1][1] == calls[-1][2] == 4  # the 5 % model is reused by the detectors
    json.dumps(out, allow_nan=False)


def test_activation_clustering_finds_the_poisons_and_removal_kills_the_backdoor(suite):
    out, _ = suite
    assert out["config"]["layer"] == "head.1"
    ac = next(r for r in out["detectors"] if r["detector"] == "activation_clustering")
    assert ac["params"]["layer"] == "head.1" and ac["poison_rate"] == 0.05
    assert ac["tpr"] >= 0.8 and ac["fpr"] <= 0.1 and ac["auroc"] >= 0.9 and set(ac["tpr_at_fpr"]) == {"0.05"}
    before = out["attacks"][1]["attack_success_rate"]
    assert ac["before"] == {k: out["attacks"][1][k] for k in ("clean_accuracy", "attack_success_rate")}
    assert ac["after"]["attack_success_rate"] <= before - 0.5 and ac["after"]["clean_accuracy"] >= 0.9
    assert ac["after"]["removed"] >= 63 * ac["tpr"]
    assert isinstance(ac["notes"], list) and all(isinstance(n, str) for n in ac["notes"])


def test_spectral_signatures_row(suite):
    out, _ = suite
    ss = next(r for r in out["detectors"] if r["detector"] == "spectral_signatures")
    assert 0 < ss["params"]["expected_fraction"] < 1 and 0 <= ss["tpr"] <= 1 and 0 <= ss["fpr"] <= 1
    assert 0.5 <= ss["auroc"] <= 1 and ss["after"]["removed"] > 0


def test_detect_rate_outside_rates_trains_once_more(data):
    seen = []

    def untrained(dataset, seed):  # structure only: an untrained model, counted
        seen.append(len(dataset))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return SmallCNN()

    out = poisoning_suite(untrained, data[0].subset(300), data[1].subset(100), rates=(0.0,), detect_rate=0.1,
                          detectors=("spectral_signatures",))
    assert seen[:2] == [300, 300] and len(seen) == 3 and seen[2] < 300  # rate 0, rate 0.1, after removal
    assert out["detectors"][0]["poison_rate"] == 0.1 and len(out["attacks"]) == 1
    assert set(out["detectors"][0]["before"]) == {"clean_accuracy", "attack_success_rate"}
    json.dumps(out, allow_nan=False)
    assert poisoning_suite(untrained, data[0].subset(300), data[1].subset(100), rates=0.0,
                           detectors=())["detectors"] == []


def test_representation_layer():
    assert representation_layer(SmallCNN()) == "head.1"
    assert representation_layer(MLP(64, 10)) == "net.5"
    with pytest.raises(ModelError, match="nn.Linear"):
        representation_layer(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"rates": (1.5,)}, InputError, "rate"),
    ({"rates": ()}, InputError, "empty"),
    ({"rates": (0.05, 0.05)}, InputError, "twice"),
    ({"target": 10}, InputError, "target"),
    ({"detectors": ("strip",)}, InputError, "detector"),
    ({"detect_rate": 0.0}, InputError, "detect_rate"),
    ({"fpr": -0.1}, InputError, "fpr"),
    ({"recipe": "SmallCNN"}, InputError, "recipe"),
    ({"recipe": lambda data, seed: "a model"}, ModelError, "nn.Module"),
    ({"train": (torch.zeros(3, 1, 8, 8), torch.zeros(3))}, InputError, "Dataset"),
])
def test_bad_input(data, kwargs, error, match):
    args = {"recipe": trainer(SmallCNN, epochs=1), "train": data[0], "test": data[1]}
    for k in ("recipe", "train"):
        if k in kwargs:
            args[k] = kwargs.pop(k)
    with pytest.raises(error, match=match):
        poisoning_suite(args["recipe"], args["train"], args["test"], **kwargs)
