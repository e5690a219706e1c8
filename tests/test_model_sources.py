"""Model sources (issue 13): what a model may return, checkpoint layouts, --mean/--std, Hugging Face folders.

* A model whose forward returns a dict or ``ModelOutput`` with ``logits``, a tuple or a list gives exactly the
  numbers of the same model returning the tensor, in the attacks (PGD, APGD, FAB, Square), the sanity checks, the
  audit, IBP and the privacy/poisoning/certify entry points; anything else is a ModelError naming what came back.
* Checkpoints with ``state_dict``/``model``/... keys and ``module.``/``_orig_mod.`` prefixes load with --arch,
  and say which key was used.
* ``--mean/--std`` put ``adverse.Normalize`` in front, validated (exit 2, nothing written) and recorded.
* A tiny ViT saved with ``save_pretrained`` audits from the command line with the numbers of the same model in
  Python; folders without weights, with pickled weights only, or naming remote code are refused (exit 2).
"""

from __future__ import annotations

import collections
import json
import os
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import adverse
from adverse import zoo
from adverse.cli import app
from adverse.errors import AdverseError, InputError, ModelError
from adverse.evasion import apgd, fab, pgd, square
from adverse.hf import read_hf_folder
from adverse.loading import load_model, model_info
from adverse.models import BlackBox, LogitsOnly, Normalize, as_classifier, base_model, logits_of

N = 20


# --------------------------------------------------------------------------------------------- models
def make_net() -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()


class DictOut(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"features": x.flatten(1), "logits": self.net(x)}


class TupleOut(DictOut):
    def forward(self, x):
        return self.net(x), x.mean()


class ListOut(DictOut):
    def forward(self, x):
        return [self.net(x)]


Named = collections.namedtuple("Named", "hidden logits")


class NamedOut(DictOut):
    def forward(self, x):
        return Named(x.flatten(1), self.net(x))


class HFOut(DictOut):
    def forward(self, x):
        from transformers.modeling_outputs import ImageClassifierOutput

        return ImageClassifierOutput(logits=self.net(x))


class Bad(DictOut):
    def __init__(self, net: nn.Module, how: str) -> None:
        super().__init__(net)
        self.how = how

    def forward(self, x):
        z = self.net(x)
        return {"str": "logits", "nologits": {"scores": z}, "none": None, "tuple_str": ("logits", z),
                "empty": (), "logits_list": {"logits": z.tolist()}, "int": 3}[self.how]


BAD = [("str", r"a str \('logits'\)"), ("nologits", r"a dict with keys \['scores'\] and no 'logits'"),
       ("none", "returned None"), ("tuple_str", r"a tuple of length 2 \(str, Tensor\) whose logits \(its first"),
       ("empty", "an empty tuple"), ("logits_list", r"whose logits \(its 'logits' entry\) are a list"),
       ("int", "returned an int, not logits")]
FIX = "make forward return the logits"

WRAPPERS = {"dict": DictOut, "tuple": TupleOut, "list": ListOut, "namedtuple": NamedOut, "hf": HFOut}


def wrapper(kind: str, net: nn.Module) -> nn.Module:
    if kind == "hf":
        pytest.importorskip("transformers")
    return WRAPPERS[kind](net)


@pytest.fixture(scope="module")
def net():
    return make_net()


@pytest.fixture(scope="module")
def batch(net):
    x = torch.rand(N, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x).argmax(1)
    return x, y


ATTACKS = {
    "pgd": lambda m, x, y: pgd(m, x, y, eps=0.03, steps=5, seed=0),
    "apgd": lambda m, x, y: apgd(m, x, y, eps=0.03, steps=5, seed=0),
    "fab": lambda m, x, y: fab(m, x, y, norm="linf", steps=5, seed=0),
    "square": lambda m, x, y: square(m, x, y, eps=0.03, max_queries=40, seed=0),
}


@pytest.fixture(scope="module")
def reference(net, batch):
    x, y = batch
    return {name: attack(net, x[:8], y[:8]) for name, attack in ATTACKS.items()}


# --------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("kind", list(WRAPPERS))
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_wrapped_outputs_give_the_numbers_of_the_tensor(net, batch, reference, kind, attack):
    x, y = batch
    r = ATTACKS[attack](wrapper(kind, net), x[:8], y[:8])
    ref = reference[attack]
    torch.testing.assert_close(r.x_adv, ref.x_adv, rtol=0, atol=0)
    assert torch.equal(r.success, ref.success) and (r.forwards, r.backwards, r.queries) == (
        ref.forwards, ref.backwards, ref.queries)


@pytest.mark.parametrize("how, message", BAD)
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_bad_outputs_are_refused_naming_what_came_back(net, batch, how, message, attack):
    x, y = batch
    with pytest.raises(ModelError, match=message) as e:
        ATTACKS[attack](Bad(net, how), x[:8], y[:8])
    assert FIX in str(e.value) and "tuple/list whose first element is the logits" in str(e.value)


def test_the_attacks_leave_the_inner_model_as_found(batch):
    x, y = batch
    net = make_net()
    net.train()
    flags = [p.requires_grad for p in net.parameters()]
    model = DictOut(net)
    pgd(model, x[:4], y[:4], eps=0.03, steps=2)
    assert net.training and model.training
    assert [p.requires_grad for p in net.parameters()] == flags and all(p.grad is None for p in net.parameters())


def test_as_classifier_is_transparent(net, batch):
    x, _ = batch
    model = DictOut(net)
    w = as_classifier(model)
    assert isinstance(w, LogitsOnly) and as_classifier(w) is w and base_model(w) is model
    assert [id(p) for p in w.parameters()] == [id(p) for p in model.parameters()]
    assert list(w.state_dict()) == [f"model.{k}" for k in model.state_dict()]
    assert as_classifier(net) is not net and torch.equal(as_classifier(net)(x), net(x))
    box = BlackBox(lambda t: net(t))
    assert as_classifier(box) is box
    assert logits_of(Named(x, x[:, 0, 0])) is not None and torch.equal(logits_of(Named(x, x[:, 0, 0])), x[:, 0, 0])
    with pytest.raises(ModelError, match=FIX):
        logits_of("logits")


def test_ibp_traces_through_the_wrapper(net, batch):
    from adverse.defenses.bounds import interval_bounds

    x, _ = batch
    lo, hi = interval_bounds(net, x[:4], 0.01)
    for kind in ("dict", "tuple"):
        lo2, hi2 = interval_bounds(as_classifier(wrapper(kind, net)), x[:4], 0.01)
        assert torch.equal(lo, lo2) and torch.equal(hi, hi2)


def test_checks_privacy_poisoning_and_certify_take_wrapped_outputs(net, batch):
    from adverse.evaluation.certify_suite import certify_suite
    from adverse.evaluation.checks import run_checks
    from adverse.poisoning._common import predict
    from adverse.privacy._signals import model_logits

    x, y = batch
    chosen = ("output", "determinism", "gradients", "steps", "black_box")
    want = [(c.name, c.status, c.evidence) for c in run_checks(net, x[:8], y[:8], eps=0.03, checks=chosen, steps=2,
                                                                max_queries=20)]
    got = [(c.name, c.status, c.evidence) for c in run_checks(DictOut(net), x[:8], y[:8], eps=0.03, checks=chosen,
                                                               steps=2, max_queries=20)]
    assert got == want and want[0][1] == "pass"
    bad = {c.name: c for c in run_checks(Bad(net, "nologits"), x[:8], y[:8], eps=0.03, checks=chosen, steps=2)}
    assert bad["output"].status == "warn" and "no 'logits'" in bad["output"].message
    assert all(bad[n].status == "skip" and FIX in bad[n].message for n in chosen[1:])
    assert torch.equal(model_logits(TupleOut(net), x), model_logits(net, x))
    assert torch.equal(predict(DictOut(net), x), predict(net, x))
    kw = {"n": None, "samples": 20, "n0": 10, "eps": [0.001], "seed": 0}

    def methods(model):
        return [{k: v for k, v in m.items() if k != "seconds"}
                for m in certify_suite(model, (x[:8], y[:8]), **kw)["methods"]]

    assert methods(DictOut(net)) == methods(net)


AUDIT = {"suites": ["evasion"], "n": N, "eps": (0.02, 0.05), "steps": 3, "checks": False, "autoattack": None,
         "minimal_norm": False, "examples": False}


def _numbers(res) -> list:
    return [res.clean_accuracy] + [(r["attack"], r["eps"], r["robust"], r["forwards"], r["backwards"])
                                   for r in res.attacks]


@pytest.fixture(scope="module")
def base_audit(net, batch):
    return adverse.audit(net, batch, **AUDIT)


@pytest.mark.parametrize("kind", ["dict", "tuple", "hf"])
def test_audit_end_to_end(net, batch, base_audit, kind):
    model = wrapper(kind, net)
    res = adverse.audit(model, batch, **AUDIT)
    assert _numbers(res) == _numbers(base_audit) and res.clean_accuracy == 1.0
    assert res.model["name"] == type(model).__name__
    assert res.robust_accuracy("worst-case", 0.05) <= res.robust_accuracy("worst-case", 0.02) <= 1.0


def test_audit_with_checks_and_curves_on_a_dict_model(net, batch):
    res = adverse.audit(DictOut(net), batch, **{**AUDIT, "checks": True, "check_n": 8, "minimal_norm": True,
                                                "autoattack": "fast", "autoattack_n": 8})
    assert {c["name"]: c["status"] for c in res.checks}["output"] == "pass"
    assert res.minimal_norm is not None and res.autoattack is not None


@pytest.mark.parametrize("how", ["str", "nologits"])
def test_audit_refuses_bad_outputs(net, batch, how):
    with pytest.raises(ModelError, match=FIX):
        adverse.audit(Bad(net, how), batch, **AUDIT)


# --------------------------------------------------------------------------------------------- checkpoints
FACTORY = """
from torch import nn
from adverse.zoo import SmallCNN


def small():
    return SmallCNN(width=8)


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.module = SmallCNN(width=8)

    def forward(self, x):
        return self.module(x)


def holder():
    return Holder()
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "source_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "source_models"
    sys.modules.pop("source_models", None)


@pytest.fixture(scope="module")
def cnn():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return zoo.SmallCNN(width=8).eval()


def _outputs_equal(a: nn.Module, b: nn.Module) -> None:
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("key", [None, "state_dict", "model_state_dict", "model", "net", "ema"])
@pytest.mark.parametrize("prefixes", [(), ("module.",), ("_orig_mod.",), ("module.", "_orig_mod.")])
def test_checkpoint_layouts(cnn, tmp_path, user_module, key, prefixes):
    state = {"".join(prefixes) + k: v for k, v in cnn.state_dict().items()}
    obj = state if key is None else {key: state, "epoch": 7, "optimizer": {"lr": 0.1, "state": {}}, "note": "x"}
    torch.save(obj, tmp_path / "ckpt.pt")
    model = load_model(tmp_path / "ckpt.pt", arch=f"{user_module}:small")
    _outputs_equal(model, cnn)
    info = model_info(model)
    if key is None and not prefixes:
        assert "checkpoint" not in info
    else:
        assert info["checkpoint"] == {"key": key, "stripped_prefixes": list(prefixes)}


def test_checkpoint_key_order_and_refusals(cnn, tmp_path, user_module):
    other = {k: torch.zeros_like(v) for k, v in cnn.state_dict().items()}
    torch.save({"state_dict_ema": other, "state_dict": cnn.state_dict()}, tmp_path / "both.pt")
    model = load_model(tmp_path / "both.pt", arch=f"{user_module}:small")
    _outputs_equal(model, cnn)
    assert model_info(model)["checkpoint"]["key"] == "state_dict"  # the EMA copy only when nothing else holds weights
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "none.pt")
    with pytest.raises(ModelError, match=r"keys \['epoch', 'optimizer'\].*state_dict, model_state_dict, model"):
        load_model(tmp_path / "none.pt", arch=f"{user_module}:small")
    # an architecture whose own keys start with "module." keeps them
    from source_models import holder as make_holder

    h = make_holder()
    h.module.load_state_dict(cnn.state_dict())
    torch.save({"model": h.state_dict()}, tmp_path / "holder.pt")
    loaded = load_model(tmp_path / "holder.pt", arch=f"{user_module}:holder")
    _outputs_equal(loaded, cnn)
    assert model_info(loaded)["checkpoint"] == {"key": "model", "stripped_prefixes": []}
    # a prefix that does not explain the mismatch: the error says where the weights came from
    torch.save({"net": {"module.conv." + k: v for k, v in cnn.state_dict().items()}}, tmp_path / "odd.pt")
    with pytest.raises(ModelError, match=r"does not match the architecture \(the weights under 'net', prefixes "
                                         r"\['module.'\] stripped\).*--arch"):
        load_model(tmp_path / "odd.pt", arch=f"{user_module}:small")


def test_safetensors_with_a_ddp_prefix(cnn, tmp_path, user_module):
    save_file({"module." + k: v.contiguous() for k, v in cnn.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model = load_model(tmp_path / "w.safetensors", arch=f"{user_module}:small")
    _outputs_equal(model, cnn)
    assert model_info(model)["checkpoint"] == {"key": None, "stripped_prefixes": ["module."]}


# --------------------------------------------------------------------------------------------- --mean / --std
CLI_FAST = ["--suites", "evasion", "--n", "20", "--eps", "0.05,0.1", "--steps", "3", "--no-checks", "--autoattack",
            "off", "--threads", "1"]


def _cli(args: list[str]) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["audit", *args])
    return r.exit_code, r.output


def test_checkpoint_and_normalization_from_the_command_line(cnn, tmp_path, user_module):
    torch.save({"model": {"module." + k: v for k, v in cnn.state_dict().items()}, "epoch": 1}, tmp_path / "c.pt")
    out = tmp_path / "out"
    code, output = _cli(["--model", str(tmp_path / "c.pt"), "--arch", f"{user_module}:small", "--data", "digits",
                         "--mean", "0.5", "--std", "0.25", *CLI_FAST, "--json", "--out", str(out)])
    assert code == 0, output
    d = json.loads((out / "results.json").read_text())
    assert d["model"]["checkpoint"] == {"key": "model", "stripped_prefixes": ["module."]}
    assert d["model"]["name"] == "SmallCNN"
    assert d["config"]["normalize"] == {"mean": [0.5], "std": [0.25], "source": "given"}
    same = adverse.audit(nn.Sequential(Normalize(0.5, 0.25), cnn), adverse.data.digits("test"),
                         **{**AUDIT, "eps": (0.05, 0.1), "minimal_norm": True})
    assert d["clean_accuracy"] == same.clean_accuracy
    assert [(r["attack"], r["eps"], r["robust"]) for r in d["attacks"]] == [
        (r["attack"], r["eps"], r["robust"]) for r in same.attacks]
    from adverse.evaluation.report import _command

    cli, _ = _command(d)
    assert cli is not None and "--mean 0.5 --std 0.25" in cli


@pytest.mark.parametrize("flags, message", [
    (["--mean", "0.5,0.5,0.5", "--std", "0.25"], r"3 values, one per channel, but --data digits has 1 channel"),
    (["--mean", "0.5", "--std", "0"], "std must be > 0"),
    (["--mean", "nan", "--std", "1"], "finite"),
    (["--mean", "0.5,,0.1", "--std", "1"], "comma-separated list of numbers"),
    (["--mean", "a", "--std", "1"], "comma-separated list of numbers"),
    (["--mean", "0.5"], "std was not given"),
    (["--mean", "0.1,0.2", "--std", "0.1,0.2,0.3"], "mean has 2 values and std 3"),
])
def test_bad_normalization_exits_2_and_writes_nothing(cnn, tmp_path, user_module, flags, message):
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, str(tmp_path / "w.safetensors"))
    out = tmp_path / "out"
    code, output = _cli(["--model", str(tmp_path / "w.safetensors"), "--arch", f"{user_module}:small", "--data",
                         "digits", *flags, *CLI_FAST, "--out", str(out)])
    assert code == 2, output
    assert message in " ".join(output.split()) and "Traceback" not in output
    assert not (out / "results.json").exists()


def test_normalization_in_the_config_file(cnn, tmp_path, user_module):
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "audit.toml").write_text(
        f'suites = ["evasion"]\nout = "o"\n[model]\nfile = "w.safetensors"\narch = "{user_module}:small"\n'
        'mean = 0.5\nstd = [0.25]\n[data]\ntest = "digits"\n'
        '[evasion]\nn = 20\neps = [0.1]\nsteps = 2\nchecks = false\nautoattack = "off"\nminimal_norm = false\n')
    code, output = _cli(["--config", str(tmp_path / "audit.toml"), "--threads", "1"])
    assert code == 0, output
    d = json.loads((tmp_path / "o" / "results.json").read_text())
    assert d["config"]["normalize"] == {"mean": [0.5], "std": [0.25], "source": "given"}
    (tmp_path / "bad.toml").write_text('[model]\nmean = "0.5"\n')
    code, output = _cli(["--config", str(tmp_path / "bad.toml")])
    assert code == 2 and "mean must be list or float or int" in output


def test_load_model_normalization_checks(cnn, tmp_path, user_module):
    save_file({k: v.contiguous() for k, v in cnn.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model = load_model(tmp_path / "w.safetensors", arch=f"{user_module}:small", mean=[0.5], std=0.25)
    _outputs_equal(model, nn.Sequential(Normalize(0.5, 0.25), cnn))
    assert model_info(model)["normalize"] == {"mean": [0.5], "std": [0.25], "source": "given"}
    for mean, std, message in ((float("inf"), 1.0, "finite"), (0.5, -1.0, "> 0"), ("0.5", 1.0, "number"),
                               ([], 1.0, "number"), (True, 1.0, "number")):
        with pytest.raises(InputError, match=message):
            load_model(tmp_path / "w.safetensors", arch=f"{user_module}:small", mean=mean, std=std)
    with pytest.raises(ModelError, match="finite"):
        Normalize(float("nan"), 1.0)


# --------------------------------------------------------------------------------------------- Hugging Face
VIT = {"image_size": 32, "patch_size": 8, "num_channels": 3, "hidden_size": 32, "num_hidden_layers": 1,
       "num_attention_heads": 2, "intermediate_size": 37, "num_labels": 10}
PREPROCESSOR = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
                "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.4, 0.3],
                "image_std": [0.25, 0.2, 0.5]}


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = transformers.ViTForImageClassification(transformers.ViTConfig(**VIT)).eval()
    folder = tmp_path_factory.mktemp("hf") / "vit"
    vit.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    same = nn.Sequential(Normalize(PREPROCESSOR["image_mean"], PREPROCESSOR["image_std"]), vit).eval()
    with torch.no_grad():
        y = same(x).logits.argmax(1)
    data = folder.parent / "images.npz"
    np.savez(data, x=x.numpy(), y=y.numpy())
    return folder, vit, same, x, y, data


def _copy(folder, dest, skip=()):
    dest.mkdir()
    for f in folder.iterdir():
        if f.name not in skip:
            (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_a_hugging_face_folder_audits_from_the_command_line(vit_folder, tmp_path):
    folder, _, same, x, y, data = vit_folder
    out = tmp_path / "out"
    code, output = _cli(["--model", str(folder), "--data", str(data), "--suites", "evasion", "--n", "16", "--eps",
                         "0.01,0.03", "--steps", "3", "--no-checks", "--autoattack", "off", "--threads", "1", "--json",
                         "--out", str(out)])
    assert code == 0, output
    d = json.loads((out / "results.json").read_text())
    assert d["model"]["name"] == "ViTForImageClassification" and d["model"]["format"] == "transformers"
    assert d["model"]["input_shape"] == [3, 32, 32] and d["model"]["model_type"] == "vit"
    assert d["config"]["normalize"]["source"] == "preprocessor_config.json"
    np.testing.assert_allclose(d["config"]["normalize"]["mean"], PREPROCESSOR["image_mean"])
    py = adverse.audit(same, (x, y), **{**AUDIT, "n": 16, "eps": (0.01, 0.03), "minimal_norm": True})
    assert d["clean_accuracy"] == py.clean_accuracy == 1.0
    rows = [(r["attack"], r["eps"], r["robust"], r["forwards"], r["backwards"]) for r in d["attacks"]]
    assert rows == [(r["attack"], r["eps"], r["robust"], r["forwards"], r["backwards"]) for r in py.attacks]
    assert all(r["robust_accuracy"] <= d["clean_accuracy"] for r in d["attacks"])
    assert min(r["robust_accuracy"] for r in d["attacks"]) < 1.0  # the attacks do something at 0.03
    # the loaded model computes what the model in memory does
    loaded = load_model(folder)
    with torch.no_grad():
        torch.testing.assert_close(as_classifier(loaded)(x), same(x).logits)


def test_read_hf_folder_is_pure_and_converts_the_preprocessing(vit_folder, tmp_path):
    folder, *_ = vit_folder
    spec = read_hf_folder(folder)
    assert spec.input_shape == (3, 32, 32) and spec.image_size_source == "preprocessor_config.json size"
    assert spec.weights == ["model.safetensors"] and not spec.pickled and spec.num_labels == 10
    np.testing.assert_allclose(spec.mean, PREPROCESSOR["image_mean"])
    np.testing.assert_allclose(spec.std, PREPROCESSOR["image_std"])
    other = _copy(folder, tmp_path / "other")
    pre = {**PREPROCESSOR, "do_rescale": False, "do_center_crop": True, "crop_size": {"height": 30, "width": 28}}
    (other / "preprocessor_config.json").write_text(json.dumps(pre))
    spec = read_hf_folder(other)  # pixels 0…255 normalized directly: mean and std scale by 1/255 for [0, 1] inputs
    np.testing.assert_allclose(spec.mean, [v / 255 for v in PREPROCESSOR["image_mean"]])
    np.testing.assert_allclose(spec.std, [v / 255 for v in PREPROCESSOR["image_std"]])
    assert spec.image_size == (30, 28) and spec.image_size_source == "preprocessor_config.json crop_size"
    (other / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False, "rescale_factor": 1 / 255}))
    spec = read_hf_folder(other)
    assert spec.mean is None and spec.normalize_source is None and spec.image_size == (32, 32)
    assert spec.image_size_source == "config.json image_size"
    (other / "preprocessor_config.json").unlink()
    assert read_hf_folder(other).mean is None


@pytest.mark.parametrize("change, message", [
    ({"image_std": [0.5, 0.0, 0.5]}, "image_std must be > 0"),
    ({"image_mean": [0.5, 0.5]}, "2 values but the model takes 3 channel"),
    ({"image_mean": [0.5, "a", 0.5]}, "finite number"),
    ({"size": {"height": 0, "width": 32}}, "size.height must be an integer between 1"),
    ({"do_normalize": "yes"}, "do_normalize must be true or false"),
    ({"rescale_factor": -1}, "rescale_factor must be a finite number > 0"),
])
def test_bad_preprocessor_values_are_refused(vit_folder, tmp_path, change, message):
    folder, *_ = vit_folder
    other = _copy(folder, tmp_path / "other")
    (other / "preprocessor_config.json").write_text(json.dumps({**PREPROCESSOR, **change}))
    with pytest.raises(ModelError, match=message):
        read_hf_folder(other)


def test_hostile_json_files_are_refused(vit_folder, tmp_path):
    folder, *_ = vit_folder
    other = _copy(folder, tmp_path / "other")
    (other / "preprocessor_config.json").write_text('{"image_mean": NaN}')
    with pytest.raises(ModelError, match="not valid JSON"):
        read_hf_folder(other)
    (other / "preprocessor_config.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="not an object"):
        read_hf_folder(other)
    (other / "preprocessor_config.json").write_text(" " * (2**20 + 1) + "{}")
    with pytest.raises(ModelError, match="more than the limit of 1,048,576; it is not a Hugging Face"):
        read_hf_folder(other)
    (other / "preprocessor_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelError, match="not valid JSON"):
        read_hf_folder(other)
    (other / "preprocessor_config.json").unlink()
    if hasattr(os, "mkfifo"):
        os.mkfifo(other / "preprocessor_config.json")
        with pytest.raises(AdverseError, match="regular file"):
            read_hf_folder(other)
        (other / "preprocessor_config.json").unlink()
    (other / "model.safetensors").rename(other / "model-00001-of-00001.safetensors")
    (other / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../model.safetensors"}}))
    with pytest.raises(ModelError, match="plain file names"):
        read_hf_folder(other)
    (other / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors"}}))
    assert read_hf_folder(other).weights == ["model.safetensors.index.json", "model-00001-of-00001.safetensors"]


def _refused(args: list[str], tmp_path, *words: str) -> None:
    out = tmp_path / "out"
    code, output = _cli([*args, "--suites", "evasion", "--n", "4", "--no-checks", "--autoattack", "off",
                         "--out", str(out)])
    text = " ".join(output.split())
    assert code == 2, output
    assert all(w in text for w in words), text
    assert "Traceback" not in output and not (out / "results.json").exists()


def test_hugging_face_folders_that_are_refused(vit_folder, tmp_path):
    transformers = pytest.importorskip("transformers")
    folder, vit, same, x, y, data = vit_folder
    empty = _copy(folder, tmp_path / "empty", skip=("model.safetensors",))
    _refused(["--model", str(empty), "--data", str(data)], tmp_path / "a", "holds no PyTorch weights",
             "save_pretrained")
    pickled = _copy(folder, tmp_path / "pickled", skip=("model.safetensors",))
    torch.save(vit.state_dict(), pickled / "pytorch_model.bin")
    _refused(["--model", str(pickled), "--data", str(data)], tmp_path / "b", "pytorch_model.bin, a pickle",
             "--trust-pickle")
    trusted = load_model(pickled, trust_pickle=True)  # the user's explicit choice
    with torch.no_grad():
        torch.testing.assert_close(as_classifier(trusted)(x), same(x).logits)
    remote = _copy(folder, tmp_path / "remote")
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(cfg))
    (remote / "modeling_evil.py").write_text("raise SystemExit('this must never run')\n")
    _refused(["--model", str(remote), "--data", str(data)], tmp_path / "c", "names remote code (auto_map",
             "never does")
    headless = tmp_path / "headless"
    with torch.random.fork_rng(devices=[]):
        transformers.ViTModel(transformers.ViTConfig(**VIT)).save_pretrained(headless)
    _refused(["--model", str(headless), "--data", str(data)], tmp_path / "d", "lack classifier.bias",
             "random numbers")
    small = tmp_path / "small.npz"
    np.savez(small, x=x[:, :, :16, :16].numpy(), y=y.numpy())
    _refused(["--model", str(folder), "--data", str(small)], tmp_path / "e", "(3, 32, 32)", "resize the images to 32×32")
    _refused(["--model", str(folder), "--arch", "SmallCNN", "--data", str(data)], tmp_path / "f",
             "Hugging Face folder", "--arch")
    no_config = _copy(folder, tmp_path / "noconfig", skip=("config.json",))
    _refused(["--model", str(no_config), "--data", str(data)], tmp_path / "g", "folder without a config.json")

