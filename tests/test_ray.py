"""Ray runs the same work as the in-process executor, with the same results bit for bit, survives a killed
worker, and fails fast on an unreachable cluster."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import adverse.evasion as ev
from adverse import data, zoo
from adverse.errors import AdverseError
from adverse.evaluation.audit import audit
from adverse.execution import RayExecutor, Task, check_reachable, map_tasks, spawn_seeds
from adverse.privacy import ReferenceModels

ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install 'adverse[ray]')")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs, started and stopped by this module."""
    torch.set_num_threads(1)
    # workers import this module's functions by name: put the tests folder on their path
    path = os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield RayExecutor()
    ray.shutdown()


@pytest.fixture(scope="module")
def digits_points():
    test = data.digits("test")
    return zoo.pretrained("digits-cnn"), test.x[:60], test.y[:60]


def test_sharded_attacks_equal_in_process_bit_for_bit(local_ray, digits_points):
    model, x, y = digits_points
    for attack, kw in (("pgd", dict(eps=0.1, steps=10)),
                       ("autoattack", dict(eps=0.1, attacks=["apgd-ce"], checks=False))):
        here = ev.sharded(attack, model, x, y, chunk_size=20, seed=3, **kw)
        there = ev.sharded(attack, model, x, y, chunk_size=20, seed=3, executor=local_ray, **kw)
        assert torch.equal(here.x_adv, there.x_adv) and torch.equal(here.success, there.success), attack
        assert here.forwards == there.forwards and here.params["chunk_seeds"] == there.params["chunk_seeds"]
        assert 0.0 < here.robust_accuracy < 1.0


def _train(x, y, seed):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # initialized from the task's seeded global RNG
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def test_reference_models_on_ray_equal_in_process(local_ray):
    train = data.digits("train")
    x, y = train.x[:200], train.y[:200]
    here = ReferenceModels(_train, x, y, n=4, seed=1)
    there = ReferenceModels(_train, x, y, n=4, seed=1, executor=local_ray)
    assert torch.equal(here.masks, there.masks)
    for a, b in zip(here.models, there.models):
        for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(va, vb), k


def test_audit_on_ray_equals_in_process(local_ray):
    kw = dict(eps=(0.1,), n=50, steps=3, batch_size=20, checks=False, suites=("evasion",), autoattack=None)
    here, there = audit(**kw), audit(**kw, executor=local_ray)
    assert [r["robust"] for r in here.attacks] == [r["robust"] for r in there.attacks]
    assert there.environment["executor"] == "ray"


def _dies_once(task: Task):
    """Kills its own worker the first time it runs (a marker file remembers), then computes."""
    marker = task.payload
    if task.index == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return task.index, torch.rand(3)  # the task's seeded RNG: the same on a retry


def test_a_killed_worker_is_retried_and_nothing_is_lost_or_doubled(local_ray, tmp_path):
    marker = str(tmp_path / "died")
    tasks = [Task(i, s, marker) for i, s in enumerate(spawn_seeds(0, 4))]
    out = map_tasks(_dies_once, tasks, local_ray)
    assert os.path.exists(marker)  # the worker did die
    expected = map_tasks(_dies_once, tasks, None)  # the marker exists now: nothing dies in-process
    assert [i for i, _ in out] == [0, 1, 2, 3]
    for (_, a), (_, b) in zip(out, expected):
        assert torch.equal(a, b)


def test_unreachable_address_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(AdverseError, match=r"cannot reach a Ray cluster at 127\.0\.0\.1:1"):
        check_reachable("127.0.0.1:1", timeout=2)
    with pytest.raises(AdverseError, match=r"cannot reach"):
        RayExecutor("127.0.0.1:9", timeout=1.5).map(_dies_once, [Task(0, 0, "x")])
    with pytest.raises(AdverseError, match=r"host:port"):
        check_reachable("nonsense", timeout=1)
    assert time.perf_counter() - t0 < 10


def test_cli_audit_on_ray(local_ray, tmp_path):
    import json

    from typer.testing import CliRunner

    from adverse.cli import app

    args = ["audit", "--n", "30", "--eps", "0.1", "--steps", "3", "--no-checks", "--json", "--suites", "evasion",
            "--autoattack", "off"]
    r = CliRunner().invoke(app, [*args, "--executor", "ray", "--out", str(tmp_path / "ray")])
    assert r.exit_code == 0, r.output
    here = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "local")])
    ray_d, local_d = (json.loads((tmp_path / f / "results.json").read_text()) for f in ("ray", "local"))
    assert ray_d["environment"]["executor"] == "ray" and here.exit_code == 0
    assert [r["robust"] for r in ray_d["attacks"]] == [r["robust"] for r in local_d["attacks"]]
    t0 = time.perf_counter()
    bad = CliRunner().invoke(app, [*args, "--executor", "ray", "--ray-address", "127.0.0.1:9",
                                   "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "cannot reach" in bad.output and time.perf_counter() - t0 < 30
