"""Issue 13 end to end: a CIFAR-shaped ResNet-18 (tests/resnet_models.py, safetensors + ``--arch module:factory``)
and a tiny Hugging Face ViT (``save_pretrained`` folder) audited on a folder of mixed-size, mixed-mode PNG and JPEG
images with ``--image-size 32`` from the command line (the folder streamed), and from Python through a
``DataLoader`` — the same numbers as the same images passed as tensors. A timm architecture by name through a
stand-in module. Bad input: a corrupt image, labels the model does not have, a file changed between passes."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from resnet_models import cifar_resnet, randomize_batch_norm
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader
from typer.testing import CliRunner

import adverse as adv
from adverse.cli import app
from adverse.errors import InputError, ModelError
from adverse.loading import ImageFolder, load_data, load_model
from adverse.streaming import Stream

FLAGS = ["--eps", "0.004,0.03", "--steps", "3", "--no-checks", "--autoattack", "off", "--suites", "evasion"]
SETTINGS = {"eps": (0.004, 0.03), "steps": 3, "checks": False, "autoattack": None, "suites": ["evasion"]}
# (mode, format, height × width): grey, colour, colour with alpha and 16-bit grey, of four sizes
KINDS = [("L", "png", (20, 24)), ("RGB", "jpg", (40, 30)), ("RGBA", "png", (32, 32)), ("I;16", "png", (16, 16))]


def _image(rng: np.random.Generator, mode: str, shape: tuple[int, int]) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, size=shape, dtype=np.uint16))
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    return Image.fromarray(rng.integers(0, 256, size=(*shape, *channels), dtype=np.uint8), mode=mode)


def _folder(root, model: nn.Module, seed: int) -> None:
    """Ten class folders of mixed images, each image put in the class the model predicts for it (after the
    32×32 resize), so that clean accuracy is high and the attacks have something to break; a class the model
    never predicts gets one image of its own (misclassified)."""
    rng = np.random.default_rng(seed)
    stage = root.parent / f"{root.name}-stage"
    (stage / "all").mkdir(parents=True)
    names = []
    for i in range(24):
        mode, ext, shape = KINDS[i % len(KINDS)]
        name = f"{i:02d}.{ext}"
        _image(rng, mode, shape).save(stage / "all" / name)
        names.append(name)
    staged = load_data(stage, image_size=32)
    with torch.no_grad():
        predicted = adv.models.as_classifier(model)(staged.x).argmax(1).tolist()
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
    for name, c in zip(names, predicted, strict=True):
        (root / str(c) / name).write_bytes((stage / "all" / name).read_bytes())
    for c in range(10):
        if not any((root / str(c)).iterdir()):
            _image(rng, "RGB", (28, 36)).save(root / str(c) / "extra.png")


def _same_numbers(a: dict, b: dict) -> None:
    assert a["n"] == b["n"] and a["clean_accuracy"] == b["clean_accuracy"]
    assert [(r["attack"], r["eps"], r["robust"]) for r in a["attacks"]] == \
        [(r["attack"], r["eps"], r["robust"]) for r in b["attacks"]]
    assert [r["robust"] for r in a["worst_case"]] == [r["robust"] for r in b["worst_case"]]
    assert a["minimal_norm"]["norms"] == pytest.approx(b["minimal_norm"]["norms"], abs=1e-6)


def _sane(d: dict, n: int) -> None:
    assert d["n"] == n and 0.5 < d["clean_accuracy"] <= 1
    worst = [r["robust_accuracy"] for r in d["worst_case"]]
    assert worst == sorted(worst, reverse=True) and worst[0] <= d["clean_accuracy"]
    assert all(r["robust_accuracy"] <= d["clean_accuracy"] for r in d["attacks"])
    assert worst[-1] < d["clean_accuracy"]  # the attacks break an undefended model at 0.03


RESNET_ARCH = "cifar_models:resnet18"
FACTORY = """from resnet_models import cifar_resnet


def resnet18():
    return cifar_resnet(width=8)
"""


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """A CIFAR-shaped ResNet-18 (width 8, inline normalization, BatchNorm with non-trivial statistics) saved as
    safetensors, its factory in a user's module (``--arch cifar_models:resnet18``), and its image folder."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = randomize_batch_norm(cifar_resnet(width=8), torch.Generator().manual_seed(0)).eval()
    root = tmp_path_factory.mktemp("resnet")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "resnet18.safetensors"))
    (root / "cifar_models.py").write_text(FACTORY)
    _folder(root / "images", model, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        yield model, root
    sys.modules.pop("cifar_models", None)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    config = {"image_size": 32, "patch_size": 8, "num_channels": 3, "hidden_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 37, "num_labels": 10}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = transformers.ViTForImageClassification(transformers.ViTConfig(**config)).eval()
    root = tmp_path_factory.mktemp("vit")
    net.save_pretrained(root / "vit")
    (root / "vit" / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
         "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.4, 0.3],
         "image_std": [0.25, 0.2, 0.5]}))
    model = load_model(root / "vit")
    _folder(root / "images", model, seed=1)
    return model, root


@pytest.mark.parametrize("which", ["resnet", "vit"])
def test_folder_cli_dataloader_and_tensors_give_the_same_audit(which, request, tmp_path):
    root = request.getfixturevalue(which)[1]
    spec = ["--model", str(root / "resnet18.safetensors"), "--arch", RESNET_ARCH] \
        if which == "resnet" else ["--model", str(root / "vit")]
    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["audit", *spec, "--data", str(root / "images"), "--image-size", "32", *FLAGS,
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    cli = json.loads((out / "results.json").read_text(encoding="utf-8"))
    n = len(ImageFolder(root / "images", image_size=32))
    _sane(cli, n)
    assert cli["data"]["shape"] == [3, 32, 32] and cli["data"]["streamed"] is True
    assert cli["data"]["images"] == {"image_size": 32}

    loaded = load_model(*spec[1:2], arch=spec[3] if which == "resnet" else None)
    loader = DataLoader(ImageFolder(root / "images", image_size=32), batch_size=5, shuffle=False)
    streamed = adv.audit(loaded, loader, **SETTINGS).to_dict()
    tensors = load_data(root / "images", image_size=32)
    assert tensors.x.shape == (n, 3, 32, 32) and tensors.x.min() >= 0 and tensors.x.max() <= 1
    in_memory = adv.audit(loaded, tensors, **SETTINGS).to_dict()
    _same_numbers(streamed, in_memory)
    _same_numbers(cli, in_memory)
    with torch.no_grad():  # clean accuracy by hand
        expected = (adv.models.as_classifier(loaded)(tensors.x).argmax(1) == tensors.y).double().mean().item()
    assert in_memory["clean_accuracy"] == pytest.approx(expected)


def test_a_streamed_folder_reads_what_the_in_memory_loader_reads(resnet):
    root = resnet[1]
    stream = load_data(root / "images", image_size=32, stream=True)
    assert isinstance(stream, Stream) and stream.shape == (3, 32, 32) and stream.num_classes == 10
    memory = load_data(root / "images", image_size=32)
    got = stream.take(len(stream))
    torch.testing.assert_close(got.x, memory.x, rtol=0, atol=0)
    assert got.y.tolist() == memory.y.tolist() and stream.note == memory.note
    picked = stream.select([7, 2, 7])
    torch.testing.assert_close(picked.x, memory.x[[7, 2, 7]], rtol=0, atol=0)


def test_bad_folders_exit_2_naming_the_problem_and_write_nothing(resnet, tmp_path):
    root = resnet[1]
    arch = ["--model", str(root / "resnet18.safetensors"), "--arch", RESNET_ARCH]
    corrupt = tmp_path / "corrupt"
    for c in ("0", "1"):
        (corrupt / c).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(corrupt / c / "ok.png")
    (corrupt / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    r = CliRunner().invoke(app, ["audit", *arch, "--data", str(corrupt), *FLAGS, "--out", str(tmp_path / "o1")])
    assert r.exit_code == 2 and "broken.png is not a PNG" in r.output.replace("\n", "")
    assert not (tmp_path / "o1" / "results.json").exists()
    many = tmp_path / "many"  # twelve classes for a ten-class model
    for c in range(12):
        (many / f"c{c:02d}").mkdir(parents=True)
        Image.new("RGB", (32, 32), (c * 20, 0, 0)).save(many / f"c{c:02d}" / "a.png")
    r = CliRunner().invoke(app, ["audit", *arch, "--data", str(many), *FLAGS, "--out", str(tmp_path / "o2")])
    assert r.exit_code == 2 and "labels must lie in [0, 9] for a model with 10 outputs" in r.output, r.output
    assert not (tmp_path / "o2" / "results.json").exists()


def test_an_image_changed_between_passes_is_refused_naming_it(tmp_path):
    folder = tmp_path / "imgs"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        Image.new("RGB", (32, 32), (10, 20, 30)).save(folder / c / "x.png")
    data = ImageFolder(folder)
    Image.new("RGB", (32, 32), (90, 20, 30)).save(folder / "b" / "x.png")
    with pytest.raises(InputError, match=r"b/x\.png changed while it was being read"):
        data[1]
    torch.testing.assert_close(data[0][0], torch.tensor([10, 20, 30]).div(255).float()[:, None, None].expand(3, 32, 32))


def test_a_dataloader_with_bad_labels_or_shuffling_is_refused(resnet):
    model, root = resnet
    folder = ImageFolder(root / "images", image_size=32)
    with pytest.raises(InputError, match="shuffle"):
        adv.audit(model, DataLoader(folder, batch_size=4, shuffle=True), **SETTINGS)

    class Shifted(torch.utils.data.Dataset):
        def __len__(self):
            return len(folder)

        def __getitem__(self, i):
            x, y = folder[i]
            return {"pixel_values": x, "labels": y + 5}

    with pytest.raises(InputError, match="labels from .* but the model has 10 classes"):
        adv.audit(model, Shifted(), **SETTINGS)


def test_timm_architecture_by_name_with_local_weights(tmp_path, monkeypatch):
    """timm cannot be imported on this machine (its torchvision does not load): a stand-in ``timm`` module with
    ``create_model`` checks what adverse asks of it, and the pretrained_cfg normalization it applies."""
    calls = []

    def create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        if name != "resnet18":
            raise RuntimeError(f"Unknown model ({name})")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = cifar_resnet(width=4, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).eval()
        net.pretrained_cfg = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                              "input_size": (3, 32, 32)}
        return net

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("resnet18").state_dict().items()}, str(weights))
    calls.clear()
    model = load_model(weights, arch="timm:resnet18,num_classes=10")
    assert calls == [("resnet18", False, {"num_classes": 10})]  # never pretrained=True: nothing is downloaded
    info = adv.loading.model_info(model)
    assert info["normalize"]["source"] == "timm pretrained_cfg of resnet18,num_classes=10"
    x = torch.rand(2, 3, 32, 32)
    ref = create_model("resnet18")
    with torch.no_grad():
        expected = ref((x - torch.tensor([0.485, 0.456, 0.406])[:, None, None])
                       / torch.tensor([0.229, 0.224, 0.225])[:, None, None])
        torch.testing.assert_close(model(x), expected)
    with pytest.raises(ModelError, match="timm cannot build 'resnet19'"):
        load_model(weights, arch="timm:resnet19")
    with pytest.raises(ModelError, match="not key=whole number"):
        load_model(weights, arch="timm:resnet18,num_classes=ten")
    monkeypatch.setitem(sys.modules, "timm", None)  # not installed: the fix is named
    with pytest.raises(ModelError, match="pip install timm"):
        load_model(weights, arch="timm:resnet18")
