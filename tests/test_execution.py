"""adverse.execution: per-task seeds, in-process executor, pluggable executors."""

from __future__ import annotations

import pytest
import torch

from adverse.errors import AdverseError
from adverse.execution import LocalExecutor, Task, get_executor, map_tasks, spawn_seeds


def draw(task: Task) -> torch.Tensor:
    """Uses the *global* generator on purpose: run_seeded must make it depend on the task's seed only."""
    return torch.randn(3) + task.payload


def test_spawn_seeds_deterministic_and_prefix_stable():
    a, b = spawn_seeds(7, 5), spawn_seeds(7, 8)
    assert a == b[:5]
    assert len(set(b)) == 8
    assert spawn_seeds(8, 5) != a
    assert all(0 <= s < 2**63 for s in b)


def test_results_depend_on_task_seed_only_not_order_or_global_state():
    tasks = [Task(i, s, float(i)) for i, s in enumerate(spawn_seeds(0, 4))]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    forward = map_tasks(draw, tasks)
    assert torch.equal(torch.get_rng_state(), before)  # caller's global RNG untouched
    torch.manual_seed(999)  # a different global state must not matter
    backward = map_tasks(draw, tasks[::-1])[::-1]
    for f, b in zip(forward, backward):
        assert torch.equal(f, b)
    assert not torch.equal(forward[0] - 0.0, forward[1] - 1.0)  # different seeds give different draws


class RecordingExecutor:
    def __init__(self):
        self.calls = 0

    def map(self, fn, tasks):
        self.calls += 1
        return [fn(t) for t in reversed(tasks)][::-1]


def test_custom_executor_gives_same_results_as_local():
    tasks = [Task(i, s, 0.0) for i, s in enumerate(spawn_seeds(3, 3))]
    ex = RecordingExecutor()
    out = map_tasks(draw, tasks, executor=ex)
    ref = map_tasks(draw, tasks, executor="local")
    assert ex.calls == 1
    assert all(torch.equal(a, b) for a, b in zip(out, ref))


def test_get_executor_names_and_errors():
    assert isinstance(get_executor(None), LocalExecutor)
    assert isinstance(get_executor("local"), LocalExecutor)
    with pytest.raises(AdverseError, match="unknown executor"):
        get_executor("dask")
    with pytest.raises(AdverseError, match="map"):
        get_executor(object())
    with pytest.raises(AdverseError, match="Task"):
        map_tasks(draw, [1, 2])
    with pytest.raises(AdverseError, match="seed"):
        spawn_seeds(-1, 2)


def test_ray_tasks_ask_for_a_gpu_only_when_their_model_is_on_cuda():
    """Which resources a Ray task requests (no GPU here: a stand-in module reports CUDA parameters)."""
    import pytest
    import torch
    from torch import nn

    from adverse.errors import InputError
    from adverse.execution import RayExecutor, Task, gpus_for

    class OnCuda(nn.Module):
        def parameters(self, recurse=True):
            yield type("P", (), {"device": torch.device("cuda", 0)})()

    cpu_model = nn.Linear(2, 2)
    assert gpus_for(Task(0, 0, ("fn", cpu_model, torch.zeros(1)))) == 0.0
    assert gpus_for(Task(0, 0, ("fn", OnCuda(), torch.zeros(1)))) == 1.0
    assert gpus_for(Task(0, 0, {"model": OnCuda()}), share=0.5) == 0.5
    assert gpus_for(Task(0, 0, None)) == 0.0
    with pytest.raises(InputError, match="num_gpus"):
        RayExecutor(num_gpus=0)
