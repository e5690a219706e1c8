"""Poisoning attacks: oracle, property and statistical tests on the bundled digits.

Statistical claims are the issue's "what must be shown" (BadNets 2×2 at 5 %: ASR ≥ 0.90 with clean accuracy
within 0.02 of the unpoisoned model; 0 %: ASR near 0; targeted 1 → 7 flips destroy class-1 recall while random
flips degrade gracefully; save → load → retrain reproduces the ASR). Trained models are cached per process
(``trained``) and shared with ``test_poison_detection.py``.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

import adverse as adv
from adverse.data import Dataset, digits
from adverse.errors import AdverseError, InputError
from adverse.poisoning import (
    PoisonedData,
    backdoor_metrics,
    badnets,
    blended,
    clean_label,
    feature_collision,
    gradient_matching,
    label_flip,
    load_poisoned,
    random_noise_control,
    retrain,
    trainer,
    wanet,
)
from adverse.poisoning.metrics import class_recall, clean_accuracy
from adverse.poisoning.triggers import blend_trigger, patch_trigger, warp_trigger
from adverse.zoo import MLP, SmallCNN

EPOCHS = 12


# ------------------------------------------------------------------------------------------ shared training
@functools.cache
def digits_train() -> Dataset:
    return digits("train")


@functools.cache
def digits_test() -> Dataset:
    return digits("test")


cnn_train_fn = trainer(SmallCNN, epochs=EPOCHS)  # the victim's recipe: seeded SmallCNN, Adam


@functools.cache
def badnets_model(rate: float) -> tuple[PoisonedData, torch.nn.Module]:
    """BadNets 2×2 bottom-right white patch, target 0, and a SmallCNN trained on it (seed 0)."""
    pd = badnets(digits_train(), target=0, rate=rate, size=2, seed=0)
    return pd, cnn_train_fn(pd.dataset(), 0)


# ------------------------------------------------------------------------------------------ bad input
def _bad(x_value: float = 1.5) -> Dataset:
    d = digits_train()
    x = d.x[:20].clone()
    x[0, 0, 0, 0] = x_value
    return Dataset(x, d.y[:20].clone(), "bad", 10)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), "a lot"])
@pytest.mark.parametrize("attack", [badnets, blended, wanet, label_flip])
def test_rate_outside_unit_interval(attack, rate):
    with pytest.raises(InputError, match="rate"):
        attack(digits_train(), rate=rate)


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 9}, "size"), ({"size": 0}, "size"), ({"size": 2, "position": (7, 7)}, "outside"),
    ({"size": 3, "position": (-1, 0)}, "outside"), ({"value": 2.0}, "bounds"), ({"position": "middle"}, "position"),
])
def test_bad_trigger(kwargs, match):
    with pytest.raises(InputError, match=match):
        badnets(digits_train(), **kwargs)


@pytest.mark.parametrize("call", [
    lambda d: badnets(d, target=10), lambda d: badnets(d, target=-1), lambda d: blended(d, target=12),
    lambda d: badnets(d, target=3, source=3), lambda d: label_flip(d, mode="targeted", source=1, target=10),
    lambda d: label_flip(d, mode="targeted", source=1), lambda d: wanet(d, target=99),
])
def test_bad_classes(call):
    with pytest.raises(AdverseError, match="class|source|target"):
        call(digits_train())


def test_images_outside_bounds():
    for attack in (badnets, blended, wanet, label_flip):
        with pytest.raises(InputError, match="outside bounds"):
            attack(_bad(1.5))
    with pytest.raises(InputError, match="NaN"):
        badnets(_bad(float("nan")))
    model = SmallCNN()
    with pytest.raises(InputError, match="outside bounds"):
        gradient_matching(model, _bad(-0.5), digits_train().x[0], adv_label=1)
    with pytest.raises(InputError, match="x_target"):
        gradient_matching(model, digits_train(), digits_train().x[0] + 2, adv_label=1)
    with pytest.raises(InputError, match="eps"):
        gradient_matching(model, digits_train(), digits_train().x[0], adv_label=1, eps=-0.1)
    with pytest.raises(InputError, match="retrain_fn"):
        gradient_matching(model, digits_train(), digits_train().x[0], adv_label=1, retrains=2)
    with pytest.raises(InputError, match="augment"):
        gradient_matching(model, digits_train(), digits_train().x[0], adv_label=1, augment=-1)
    with pytest.raises(InputError, match="adv_label"):
        feature_collision(model, digits_train(), digits_train().x[0], adv_label=10)


def test_bad_files_and_misuse(tmp_path):
    garbage = tmp_path / "p.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a safetensors"):
        load_poisoned(garbage)
    with pytest.raises(InputError, match="no such file"):
        load_poisoned(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="no trigger"):
        label_flip(digits_train(), rate=0.1).apply_trigger(digits_train().x[:2])
    with pytest.raises(InputError, match="lower the rate"):
        badnets(digits_train(), rate=0.95)  # more poisons than non-target samples... 0.95 · n > 0.9 · n


# ------------------------------------------------------------------------------------------ triggers (oracles)
@settings(max_examples=examples(30), deadline=None)
@given(size=st.integers(1, 8), row=st.integers(0, 7), col=st.integers(0, 7), value=st.floats(0, 1))
def test_patch_trigger_oracle(size, row, col, value):
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(size))
    if row + size > 8 or col + size > 8:
        with pytest.raises(InputError):
            patch_trigger((1, 8, 8), size=size, position=(row, col), value=value)
        return
    out = patch_trigger((1, 8, 8), size=size, position=(row, col), value=value).apply(x)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[row : row + size, col : col + size] = True
    assert torch.allclose(out[..., inside], torch.full_like(out[..., inside], value))
    assert torch.equal(out[..., ~inside], x[..., ~inside])


@settings(max_examples=examples(20), deadline=None)
@given(alpha=st.floats(0.01, 1.0), seed=st.integers(0, 100))
def test_blend_and_warp_stay_in_bounds(alpha, seed):
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    trig = blend_trigger((1, 8, 8), alpha=alpha, seed=seed)
    out = trig.apply(x)
    assert torch.allclose(out, (1 - alpha) * x + alpha * trig.tensors["pattern"], atol=1e-6)
    warped = warp_trigger((1, 8, 8), k=4, s=1.0, seed=seed).apply(x)
    assert warped.min() >= 0 and warped.max() <= 1 and not torch.allclose(warped, x)


def test_warp_identity_at_zero_displacement():
    trig = warp_trigger((1, 8, 8), k=4, s=1e-9, seed=0)
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(trig.apply(x), x, atol=1e-6)


# ------------------------------------------------------------------------------------------ poison bookkeeping
@settings(max_examples=examples(15), deadline=None)
@given(rate=st.floats(0, 0.5), target=st.integers(0, 9), seed=st.integers(0, 1000))
def test_badnets_changes_exactly_the_budget(rate, target, seed):
    d = digits_train()
    pd = badnets(d, target=target, rate=rate, seed=seed)
    assert pd.indices.numel() == round(rate * len(d))
    assert (pd.y_clean[pd.indices] != target).all() and (pd.y[pd.indices] == target).all()
    keep = ~pd.is_poison
    assert torch.equal(pd.x[keep], d.x[keep]) and torch.equal(pd.y[keep], d.y[keep])
    assert torch.equal(pd.x[pd.indices][..., 6:, 6:], torch.ones_like(pd.x[pd.indices][..., 6:, 6:]))
    again = badnets(d, target=target, rate=rate, seed=seed)
    assert torch.equal(again.x, pd.x) and torch.equal(again.indices, pd.indices)


def test_source_specific_and_wanet_noise_mode():
    d = digits_train()
    pd = badnets(d, target=0, rate=0.03, source=3, seed=1)
    assert (pd.y_clean[pd.indices] == 3).all()
    w = wanet(d, target=0, rate=0.05, cross_ratio=2.0, s=1.0, seed=0)
    noise = torch.tensor(w.params["noise_indices"])
    assert noise.numel() == round(0.10 * len(d))
    assert torch.equal(w.y[noise], d.y[noise])  # noise-mode samples keep their labels
    assert w.indices.numel() == round(0.05 * len(d)) + noise.numel()


def test_label_flip_bookkeeping():
    d = digits_train()
    r = label_flip(d, rate=0.3, seed=0)
    assert r.indices.numel() == round(0.3 * len(d))
    assert (r.y[r.indices] != d.y[r.indices]).all() and torch.equal(r.x, d.x)
    t = label_flip(d, rate=0.9, mode="targeted", source=1, target=7, seed=0)
    assert (d.y[t.indices] == 1).all() and (t.y[t.indices] == 7).all()
    assert t.indices.numel() == round(0.9 * int((d.y == 1).sum()))


# ------------------------------------------------------------------------------------------ statistical
def test_badnets_digits_5_percent():
    """BadNets 2×2 at 5 %: ASR ≥ 0.90 and clean-accuracy drop ≤ 0.02; at 0 % the ASR stays near 0."""
    pd0, clean = badnets_model(0.0)
    assert pd0.indices.numel() == 0 and torch.equal(pd0.x, digits_train().x)
    pd5, poisoned = badnets_model(0.05)
    te = digits_test()
    m0 = backdoor_metrics(clean, pd5, te)  # the same trigger on the unpoisoned model
    m5 = backdoor_metrics(poisoned, pd5, te)
    assert m0["asr"] <= 0.03, m0
    assert m5["asr"] >= 0.90, m5
    assert m0["clean_accuracy"] - m5["clean_accuracy"] <= 0.02, (m0, m5)
    assert min(m5["asr_by_source"].values()) >= 0.7, m5["asr_by_source"]
    assert m5["robust_accuracy"] <= 1 - m5["asr"] + 1e-6


def test_round_trip_same_asr(tmp_path):
    """Save the poisons, reload, retrain with the same seed: the same poisons, the same model, the same ASR."""
    pd, model = badnets_model(0.05)
    path = pd.save(tmp_path / "badnets.safetensors")
    back = load_poisoned(path)
    assert torch.equal(back.x, pd.x) and torch.equal(back.y, pd.y) and torch.equal(back.indices, pd.indices)
    assert back.params == pd.params and back.attack == "badnets"
    assert torch.equal(back.apply_trigger(digits_test().x), pd.apply_trigger(digits_test().x))
    again = retrain(cnn_train_fn, back, seed=0)
    assert backdoor_metrics(again, back, digits_test()) == backdoor_metrics(model, pd, digits_test())


_mlp_train_fn = trainer(lambda: MLP(64, 10), epochs=30)


def test_targeted_flip_destroys_recall_random_degrades_gracefully():
    d, te = digits_train(), digits_test()
    clean = _mlp_train_fn(d, 0)
    targeted = _mlp_train_fn(label_flip(d, rate=0.9, mode="targeted", source=1, target=7, seed=0).dataset(), 0)
    noisy = _mlp_train_fn(label_flip(d, rate=0.2, seed=0).dataset(), 0)
    assert class_recall(clean, te.x, te.y, 1) >= 0.9
    assert class_recall(targeted, te.x, te.y, 1) <= 0.2
    ones = te.x[te.y == 1]
    assert float((targeted(ones).argmax(1) == 7).float().mean()) >= 0.7
    acc_clean, acc_noisy = clean_accuracy(clean, te.x, te.y), clean_accuracy(noisy, te.x, te.y)
    assert acc_clean - acc_noisy <= 0.1, (acc_clean, acc_noisy)  # 20 % random flips: graceful
    assert min(class_recall(noisy, te.x, te.y, c) for c in range(10)) >= 0.7


def test_blended_implants_backdoor():
    pd = blended(digits_train(), target=0, rate=0.05, alpha=0.2, seed=0)
    m = backdoor_metrics(cnn_train_fn(pd.dataset(), 0), pd, digits_test())
    assert m["asr"] >= 0.8 and m["clean_accuracy"] >= 0.93, m


# ------------------------------------------------------------------------------------------ clean label / targeted
def _state(model):
    return ([p.detach().clone() for p in model.parameters()], [p.requires_grad for p in model.parameters()],
            [m.training for m in model.modules()], [p.grad for p in model.parameters()])


def _same_state(model, before):
    params, flags, modes, grads = _state(model)
    assert all(torch.equal(a, b) for a, b in zip(params, before[0]))
    assert flags == before[1] and modes == before[2] and all(g is None for g in grads)


def test_clean_label_keeps_labels_and_budget():
    d = digits_train()
    _, clean = badnets_model(0.0)
    clean.train()  # the caller's mode must come back
    before = _state(clean)
    pd = clean_label(d, clean, target=0, rate=0.5, eps=0.1, steps=5, seed=0)
    _same_state(clean, before)
    clean.eval()
    assert torch.equal(pd.y, d.y) and (d.y[pd.indices] == 0).all()
    assert pd.indices.numel() == round(0.5 * int((d.y == 0).sum()))
    delta = (pd.x - d.x)[pd.indices]
    trigger = pd.trigger.tensors["mask"].bool().expand_as(delta)
    assert delta[~trigger].abs().max() <= 0.1 + 1e-6  # outside the patch: within the PGD budget
    assert pd.x.min() >= 0 and pd.x.max() <= 1


def test_feature_collision_moves_features_within_budget():
    from adverse.poisoning._common import features

    d, te = digits_train(), digits_test()
    _, model = badnets_model(0.0)
    target = te.x[te.y == 3][0]
    pd = feature_collision(model, d, target, adv_label=5, rate=0.004, eps=0.2, steps=60, seed=0)
    base, poison = d.x[pd.indices], pd.x[pd.indices]
    assert (poison - base).abs().max() <= 0.2 + 1e-6 and torch.equal(pd.y, d.y)
    f_t = features(model, target[None])
    assert (features(model, poison) - f_t).norm(dim=1).mean() < 0.7 * (features(model, base) - f_t).norm(dim=1).mean()


def test_gradient_matching_aligns_gradients_better_than_noise():
    """Crafted poisons align their training gradient with the target's adversarial gradient (cosine ≥ 0.8) and
    at least halve the mismatch ``B = 1 − cos`` of random sign noise at the same budget on the same images."""
    from adverse.poisoning.targeted import _cosine_mismatch, _flat_grad, _frozen_copy

    d, te = digits_train(), digits_test()
    _, model = badnets_model(0.0)
    model.train()
    before = _state(model)
    i = int((te.y == 8).nonzero()[0])
    pd = gradient_matching(model, d, te.x[i], adv_label=1, y_target=8, rate=0.02, eps=0.2, steps=60, restarts=1,
                           seed=0)
    _same_state(model, before)
    model.eval()
    assert pd.indices.numel() == round(0.02 * len(d)) and (d.y[pd.indices] == 1).all()
    assert (pd.x - d.x).abs().max() <= 0.2 + 1e-6 and pd.x.min() >= 0 and pd.x.max() <= 1
    assert torch.equal(pd.y, d.y)
    net, params = _frozen_copy(model)
    g_t = _flat_grad(torch.nn.functional.cross_entropy(net(te.x[i : i + 1]), torch.tensor([1])), params, False)
    norm_t = torch.sqrt(sum(g.pow(2).sum() for g in g_t))

    def alignment(p: PoisonedData) -> float:
        g = _flat_grad(torch.nn.functional.cross_entropy(net(p.x[p.indices]), p.y[p.indices], reduction="sum"),
                       params, False)
        return 1 - float(_cosine_mismatch(g, g_t, norm_t))

    crafted, control = alignment(pd), alignment(random_noise_control(pd, seed=0))
    assert crafted >= 0.8 and abs(crafted - pd.params["alignment"]) < 1e-4
    assert 1 - crafted <= 0.5 * (1 - control), (crafted, control)  # at least halves the mismatch B


def test_public_names():
    for name in ("badnets", "blended", "wanet", "clean_label", "feature_collision", "gradient_matching",
                 "label_flip", "PoisonedData"):
        assert callable(getattr(adv.poisoning, name))


class _Constant(torch.nn.Module):
    """Always predicts class ``c``: the metrics' oracle."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.full((x.shape[0],), self.c), 10).float()


def test_metrics_oracle():
    from adverse.poisoning import attack_success_rate, targeted_evaluation

    te = digits_test()
    pd = badnets(digits_train(), target=2, rate=0.01, seed=0)
    assert attack_success_rate(_Constant(2), pd, te.x, te.y) == 1.0
    assert attack_success_rate(_Constant(5), pd, te.x, te.y) == 0.0
    assert attack_success_rate(_Constant(2), pd, te.x, te.y, source=7) == 1.0
    m = backdoor_metrics(_Constant(5), pd, te)
    assert m["robust_accuracy"] == pytest.approx(float((te.y[te.y != 2] == 5).float().mean()))
    assert m["clean_accuracy"] == pytest.approx(float((te.y == 5).float().mean()))
    target = te.x[0]
    fake = PoisonedData(pd.x, pd.y, pd.indices, "gradient_matching", {"eps": 0.1}, 10, pd.y_clean, (0.0, 1.0), None,
                        {"x": target[None], "adv_label": torch.tensor([4]), "x_clean": digits_train().x[pd.indices]})
    out = targeted_evaluation(lambda d, s: _Constant(4), [fake, fake])
    assert out["success_rate"] == 1.0 and out["control_rate"] == 1.0
    assert targeted_evaluation(lambda d, s: _Constant(3), [fake])["success_rate"] == 0.0
    ctrl = random_noise_control(fake, seed=0)
    delta = (ctrl.x - digits_train().x)[fake.indices]
    assert delta.abs().max() <= 0.1 + 1e-6 and (ctrl.x[~fake.is_poison] == pd.x[~fake.is_poison]).all()


def test_clean_label_needs_the_adversarial_perturbation():
    """Turner et al.'s point: the trigger on correctly labelled target images alone implants (almost) nothing;
    with the adversarial perturbation that makes them hard, the same trigger becomes a backdoor."""
    d, te = digits_train(), digits_test()
    _, clean = badnets_model(0.0)
    asr = {}
    for eps in (0.0, 0.2):
        pd = clean_label(d, clean, target=0, rate=0.5, eps=eps, steps=20, seed=0)
        asr[eps] = backdoor_metrics(cnn_train_fn(pd.dataset(), 0), pd, te)["asr"]
    assert asr[0.0] <= 0.1 and asr[0.2] >= 0.25 and asr[0.2] >= asr[0.0] + 0.2, asr


def test_gradient_matching_flips_more_targets_than_its_random_noise_control():
    """Issue 5: gradient matching flips clearly more targets of victims retrained from scratch (two seeds,
    neither the surrogate's) than random ±eps sign noise on the same images at the same budget.

    MLP on digits, 5 % budget (63 poisons of the surrogate's runner-up class), L∞ eps 0.25, 250 steps, one
    restart; 8 targets drawn at random among the test images that the surrogate and both clean victims classify
    correctly and that the surrogate gives less than 0.95 probability (without that filter — the surrogate gives
    most test images more — the same recipe flipped 0 of 16: such targets are out of this budget's reach).
    Measured: 9 of 16 (target, victim) pairs flipped, control 0 of 16; about 30 s on one thread."""
    from adverse.poisoning import targeted_evaluation

    d, te = digits_train(), digits_test()
    train_fn = trainer(lambda: MLP(64, 10), epochs=20)
    surrogate, victims = train_fn(d, 0), (1, 2)
    clean = [train_fn(d, s) for s in victims]
    with torch.no_grad():
        probs = torch.softmax(surrogate(te.x), 1)
        ok = (probs.argmax(1) == te.y) & (probs.max(1).values < 0.95)
        for m in clean:
            ok &= m(te.x).argmax(1) == te.y
    order = torch.randperm(len(te), generator=torch.Generator().manual_seed(0))
    poisoned = []
    for i in order[ok[order]][:8].tolist():
        runner_up = probs[i].clone()
        runner_up[te.y[i]] = -1
        poisoned.append(gradient_matching(surrogate, d, te.x[i], adv_label=int(runner_up.argmax()),
                                          y_target=int(te.y[i]), rate=0.05, eps=0.25, steps=250, restarts=1,
                                          seed=i))
    assert all(p.params["alignment"] > 0.95 for p in poisoned)
    hits = ctrl = 0
    for s in victims:
        out = targeted_evaluation(train_fn, poisoned, seed=s)
        hits += sum(out["per_target"])
        ctrl += sum(out["control_per_target"])
    assert hits >= 6 and ctrl <= 1 and hits >= ctrl + 5, (hits, ctrl)


def test_random_shift_is_a_differentiable_integer_translation():
    """The differentiable augmentation of ``gradient_matching(augment=k)``: each image moved by an integer
    offset in [-k, k]², zero-filled, gradients flowing to the input; ``trainer(augment=k)`` stays deterministic."""
    from adverse.poisoning.targeted import random_shift

    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out = random_shift(x, 1, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    for img, src in zip(out.detach(), x.detach()):
        pad = torch.nn.functional.pad(src, (1, 1, 1, 1))
        assert any(torch.equal(img, pad[:, r : r + 8, c : c + 8]) for r in range(3) for c in range(3))
    out.sum().backward()
    assert x.grad is not None and x.grad.sum() > 0
    assert random_shift(x, 0, torch.Generator()) is x
    fn = trainer(lambda: MLP(64, 10), epochs=1, augment=1)
    d = digits_train().subset(200)
    assert torch.equal(fn(d, 3).net[1].weight, fn(d, 3).net[1].weight)
