"""The audit's TOML configuration file (``adverse audit --config audit.toml``).

Every key is optional; a command-line flag, when given, wins over the file. Unknown tables or keys are refused
with the list of known ones, so a typo never silently falls back to a default::

    suites = ["evasion", "privacy", "poisoning", "certify"]   # default: every suite the inputs allow
    seed = 0
    threads = 2
    out = "audit"                  # the output folder

    [model]
    file = "model.safetensors"     # see adverse.loading.load_model (or a Hugging Face save_pretrained folder)
    arch = "SmallCNN"              # or "package.module:factory"
    trust_pickle = false
    trust_code = false             # load a .pt2 / TorchScript file without its code checks (see adverse.archives)
    mean = [0.485, 0.456, 0.406]   # the inputs' normalization (or one number): adverse.Normalize(mean, std) is
    std = [0.229, 0.224, 0.225]    # put in front of the model, as --mean/--std do

    [data]
    test = "test.npz"              # the data to audit on (see adverse.loading.load_data)
    train = "train.npz"            # the model's training data: enables the privacy and poisoning suites
    label_column = "target"        # a CSV's label column: a name (any case) or a 0-based index (-1: the last)
    resize = 256                   # image folders: shorter side to 256 (or image_size = N: N×N), as --resize does
    center_crop = 224              # then the 224×224 centre, as --center-crop does
    recipe = "mypkg.train:recipe"  # recipe(dataset, seed) -> model, or a zoo name: enables reference models

    [evasion]                      # keyword arguments of adverse.evaluation.audit
    eps = [0.05, 0.1, 0.2, 0.3]
    norm = "linf"
    n = 500
    steps = 40                     # or a table: steps = { pgd = 40, apgd-ce = 100 }
    attacks = ["fgsm", "pgd", "apgd-ce", "square"]
    checks = true
    check_n = 100
    minimal_norm = true
    autoattack = "fast"            # "standard", "fast" or "off"
    autoattack_n = 100
    compile = "auto"               # AutoAttack's channels_last / torch.compile where measured faster: "on", "off"
    batch_size = 256
    save_adv = false               # write every adversarial example to OUT/adversarial (as --save-adv does)

    [privacy]                      # keyword arguments of adverse.evaluation.privacy_suite.privacy_suite
    n = 500
    references = 8

    [poisoning]                    # ... of adverse.evaluation.poisoning_suite.poisoning_suite
    rates = [0.0, 0.01, 0.05]

    [certify]                      # ... of adverse.evaluation.certify_suite.certify_suite
    n = 100
    sigma = 0.25

    [defense]                      # ... of adverse.evaluation.defense_suite.defense_suite; runs the defense suite
    layer = { name = "pca", k = 20 }   # the layer and its options (or layer = "pca:k=20", as --defense takes it)
    n = 200
    steps = 40

Paths in ``[model]`` and ``[data]`` are relative to the configuration file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tomllib

from .errors import InputError
from .evaluation.suites import NAMES

TOP = {"suites": list, "seed": int, "threads": int, "out": str, "executor": str, "ray_address": str, "device": str,
       "precision": str, "protocol": str}
MODEL = {"file": str, "arch": str, "trust_pickle": bool, "trust_code": bool, "mean": (list, float, int),
         "std": (list, float, int)}
DATA = {"test": str, "train": str, "recipe": str, "label_column": (str, int), "image_size": int, "resize": int,
        "center_crop": int}
EVASION = {"eps": (list, float, int), "norm": str, "n": int, "steps": (int, dict), "attacks": list, "checks": bool,
           "check_n": int, "minimal_norm": bool, "autoattack": str, "autoattack_n": int, "batch_size": int,
           "examples": bool, "save_adv": bool, "compile": str}
SUITE_TABLES = tuple(n for n in NAMES if n != "evasion")  # a table of options per suite
TABLES = {"model": MODEL, "data": DATA, "evasion": EVASION, **{t: None for t in SUITE_TABLES}}
PATH_KEYS = {("model", "file"), ("data", "test"), ("data", "train")}


def _check_types(where: str, table: dict[str, Any], schema: dict[str, Any]) -> None:
    unknown = sorted(set(table) - set(schema))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; known keys are {', '.join(sorted(schema))}")
    for key, value in table.items():
        types = schema[key] if isinstance(schema[key], tuple) else (schema[key],)
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            names = " or ".join(t.__name__ for t in types)
            raise InputError(f"{where}: {key} must be {names}, got {value!r}")


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check an audit configuration file; return its tables with paths made absolute.

    Raises :class:`InputError` for a missing or unreadable file, invalid TOML, unknown tables or keys, or values
    of the wrong type (with the file's name and the key in the message).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no such configuration file: {p}")
    try:
        cfg = tomllib.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"{p} is not valid TOML: {e}") from e
    top = {k: v for k, v in cfg.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in cfg.items() if isinstance(v, dict)}
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise InputError(f"{p}: unknown table(s) {unknown}; known tables are {', '.join(TABLES)}")
    _check_types(str(p), top, TOP)
    for name, table in tables.items():
        schema = TABLES[name]
        if schema is not None:
            _check_types(f"{p} [{name}]", table, schema)
    out: dict[str, Any] = {**top, **{name: dict(table) for name, table in tables.items()}}
    for table, key in PATH_KEYS:
        value = out.get(table, {}).get(key)
        if value is not None and ":" not in value.split("/")[0] and not Path(value).is_absolute():
            candidate = p.parent / value
            if candidate.exists() or table != "data":
                out[table][key] = str(candidate)
    if "out" in out and not Path(out["out"]).is_absolute():
        out["out"] = str(p.parent / out["out"])
    return out
