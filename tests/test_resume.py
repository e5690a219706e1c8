"""An interrupted audit resumes: finished batches are reused, never recomputed, and the result equals an
uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import adverse.evasion  # noqa: F401  (loads the attack modules)
from adverse.evaluation.audit import STATE_FILE, audit

ARGS = dict(eps=(0.1, 0.3), n=60, steps=5, batch_size=16, checks=False, suites=("evasion",), minimal_norm=False,
            autoattack=None, examples=False)


def numbers(d: dict) -> tuple:
    """Everything an audit measures, without timings and dates."""
    return (d["clean_accuracy"], [(r["attack"], r["eps"], r["robust"], r["forwards"], r["backwards"])
                                  for r in d["attacks"]], d["worst_case"])


@pytest.fixture
def counted(monkeypatch):
    """Count the attack calls the audit makes (one per batch)."""
    calls: list[str] = []

    def wrap(module, name):
        original = getattr(module, name)

        def run(*args, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, run)

    # sys.modules: ``adverse.evasion.apgd`` as an attribute is the function, not the module
    gradient_module, apgd_module = sys.modules["adverse.evasion.gradient"], sys.modules["adverse.evasion.apgd"]
    for module, name in ((gradient_module, "fgsm"), (gradient_module, "pgd"), (apgd_module, "apgd")):
        wrap(module, name)
    return calls


def test_interrupted_audit_resumes_without_recomputing(tmp_path, counted):
    whole = audit(**ARGS)
    total_calls = len(counted)
    assert total_calls == 3 * 2 * 4  # attacks × eps × batches of 16 in 60
    counted.clear()

    seen = []

    def stop_midway(description, completed, total):
        seen.append(completed)
        if len(counted) == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        audit(**ARGS, state_dir=tmp_path, progress=stop_midway)
    first = len(counted)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert len(state["batches"]) == first == 10

    counted.clear()
    resumed = audit(**ARGS, state_dir=tmp_path)
    assert len(counted) == total_calls - first  # nothing computed twice
    assert numbers(resumed.to_dict()) == numbers(whole.to_dict())
    for key, bad in whole.fooled.items():
        np.testing.assert_array_equal(resumed.fooled[key], bad)
    resumed.save(tmp_path)
    assert not (tmp_path / STATE_FILE).exists()


def test_state_of_another_audit_is_not_used(tmp_path, counted):
    audit(**dict(ARGS, eps=(0.1,)), state_dir=tmp_path)
    counted.clear()
    audit(**dict(ARGS, eps=(0.1,), seed=1), state_dir=tmp_path)  # another seed: all new work
    assert len(counted) == 3 * 4


def test_killed_cli_audit_resumes_to_the_same_result(tmp_path):
    cmd = [sys.executable, "-m", "adverse.cli", "audit", "--n", "120", "--eps", "0.1,0.2,0.3", "--steps", "20",
           "--threads", "1", "--no-checks", "--json", "--suites", "evasion", "--autoattack", "off"]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    state = out / STATE_FILE
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.is_file():
            try:
                if len(json.loads(state.read_text())["batches"]) >= 3:
                    break
            except (ValueError, OSError):  # never half-written: the file is replaced atomically
                raise
        time.sleep(0.05)
    assert proc.poll() is None, "the audit finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    done = len(json.loads(state.read_text())["batches"])
    assert 3 <= done < 9

    resumed = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    fresh = subprocess.run([*cmd, "--out", str(tmp_path / "fresh")], capture_output=True, text=True, env=env,
                           timeout=600)
    assert fresh.returncode == 0, fresh.stderr
    assert numbers(json.loads(resumed.stdout)) == numbers(json.loads(fresh.stdout))
    assert not state.exists()
