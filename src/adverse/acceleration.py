"""Cheaper passes for long attacks: the memory layout and compiled gradient-free forward passes, each used only
where it was measured faster on the caller's model and inputs.

A long evaluation such as AutoAttack spends nearly all of its time in the model's passes, and on a CPU the
default way of running them is not always the fastest: convolutions and pooling often run faster on
``channels_last`` tensors, and ``torch.compile`` fuses the element-wise work around them. Neither is faster for
every model (a compiled backward pass can be slower than the eager one), so :func:`accelerated` times the
candidates on the caller's batch and keeps a choice only where it is at least ``min_speedup`` faster:

1. the layout, by the time the run's passes would take in each: its forward+backward passes (the white-box
   attacks') and its forward passes (the score-based queries' and the checks'), each weighed by how many the run
   may make, and timed in alternating rounds keeping each one's fastest. (On the digits CNN channels_last makes
   the forward pass 1.8× faster and the forward+backward pass equal within timing noise; a rule that refused any
   slower kind of pass, timed once, refused the layout in 3 of 18 timings, which makes a Square-heavy run 1.7×
   slower; weighed and timed in rounds it chose channels_last in 12 of 12). In channels_last the weights and
   inputs are converted, and where the model's own operations leave that layout, its activations and their
   gradients too (:func:`channels_last_layout`); a model that fails in it (a ``.view()`` of a 4-d activation)
   keeps its own layout and the plan says why;
2. a compiled copy for the passes made without gradients (score-based queries, checks of iterates), by the
   time of one forward pass. Passes with gradients always run the model itself.

Compiling costs seconds, so ``mode="auto"`` compiles only where the forward passes the run may make add up to
at least :data:`COMPILE_PAYBACK_S` seconds. Whatever is decided is recorded in :class:`Plan`, with the timings it
rests on; a compiler that fails leaves the model as it was and says why.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import InputError

MODES = ("auto", "on", "off")
# auto mode compiles when the run's passes (in forward passes) may take this long: compiling a convolutional
# network costs 2-15 s on a CPU, and where it helps it saves about a tenth of an AutoAttack run (measured in
# benchmarks/BENCHMARKS.md), so a run of 150 s pays for it
COMPILE_PAYBACK_S = 150.0
LAYOUT_PAYBACK_S = 5.0  # auto mode times the layouts when the run's passes may take this long
MIN_SPEEDUP = 1.03  # what the compiled passes, once paid for, must gain to be used (above timing noise)
LAYOUT_ROUNDS = 2  # rounds of timing per layout (the fastest kept)
LAYOUT_SPEEDUP = 1.05  # what channels_last must gain on the run's passes (timing noise is about ±5 %)


@dataclass
class Plan:
    """What :func:`accelerated` chose and why: the layout, whether gradient-free passes are compiled, the
    per-sample times it measured (ms) and the seconds spent measuring and compiling."""

    layout: str = "contiguous"
    compiled: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"layout": self.layout, "compiled": self.compiled,
                "timings_ms": {k: round(v, 4) for k, v in self.timings_ms.items()},
                "notes": list(self.notes), "seconds": round(self.seconds, 3)}


class Accelerated(nn.Module):
    """``model`` with its inputs in ``channels_last`` (when asked) and its gradient-free forward passes run by
    ``fast`` (a compiled copy; None: the model itself). Passes with gradients always run ``model``."""

    def __init__(self, model: nn.Module, fast: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.model = model
        self.fast = fast
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.fast is not None and not torch.is_grad_enabled():
            return self.fast(x)
        return self.model(x)


def check_mode(mode: Any) -> str:
    if mode is True:
        return "on"
    if mode is False or mode is None:
        return "off"
    if mode not in MODES:
        raise InputError(f"compile must be one of {', '.join(MODES)} (or True/False), got {mode!r}; "
                         "'auto' compiles only where it was measured faster")
    return mode


def per_sample_ms(fn: Callable[[], Any], n: int, repeats: int = 5) -> float:
    """The median time of ``fn`` over ``repeats`` calls after one warm-up call, in ms per sample."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3 / n


def forward_pass(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], Any]:
    """One forward pass of ``x`` without gradients, as a function of nothing (for :func:`per_sample_ms`)."""
    def run() -> Any:
        with torch.no_grad():
            return model(x)
    return run


def forward_backward_pass(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], Any]:
    """One forward and one backward pass of ``x`` (the input gradient of a scalar of the logits), as a function of
    nothing (for :func:`per_sample_ms`)."""
    def run() -> Any:
        v = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = model(v)
            (g,) = torch.autograd.grad(out.float().logsumexp(dim=1).sum(), v)
        return g
    return run


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@contextlib.contextmanager
def channels_last_weights(model: nn.Module, channels_last: bool = True) -> Iterator[None]:
    """The model's 4-d parameters and buffers in ``channels_last`` for the duration (with ``channels_last``
    false, nothing changes); the original tensors are put back on exit (the same objects, so nothing the caller
    holds changes)."""
    if not channels_last:
        yield
        return
    saved = [(t, t.data) for t in list(model.parameters()) + list(model.buffers()) if t.dim() == 4]
    try:
        for t, data in saved:
            t.data = data.contiguous(memory_format=torch.channels_last)
        yield
    finally:
        for t, data in saved:
            t.data = data


def _off_layout(t: Any) -> bool:
    """A 4-d tensor not laid out in ``channels_last``."""
    return torch.is_tensor(t) and t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last)


def _to_channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)  # the tensor itself where it already is


def _output_hook(on_convert: Callable[[], Any] | None = None) -> Callable[..., Any]:
    """A forward hook that returns a module's 4-d output in ``channels_last`` where it is not (calling
    ``on_convert`` when it converts)."""
    def hook(module: nn.Module, inputs: Any, out: Any) -> Any:
        if not _off_layout(out):
            return None
        if on_convert is not None:
            on_convert()
        return _to_channels_last(out)
    return hook


def _gradient_hook(on_convert: Callable[[], Any] | None = None) -> Callable[..., Any]:
    """A forward hook that makes the gradient arriving at a module's 4-d output ``channels_last`` where it is not
    (calling ``on_convert`` when it converts)."""
    def convert(g: torch.Tensor) -> torch.Tensor | None:
        if not _off_layout(g):
            return None
        if on_convert is not None:
            on_convert()
        return _to_channels_last(g)

    def hook(module: nn.Module, inputs: Any, out: Any) -> None:
        if torch.is_tensor(out) and out.dim() == 4 and out.requires_grad:
            out.register_hook(convert)
    return hook


def _activation_hooks(model: nn.Module, x: torch.Tensor) -> tuple[list[Any], list[str]]:
    """Forward hooks that keep the activations and their gradients in ``channels_last`` where the model's own
    operations leave it, found by probing one small batch; the handles and what they fix, in words.

    Two places were found to do so, each costing a layout conversion per pass inside the next operation's
    backward (measured on the digits CNN at 300 points: 0.053 ms per sample forward+backward, 0.043 with both
    fixed): a convolution of a one-channel input (its input is contiguous and channels_last at once, and the
    convolution then writes its output contiguous) and the gradient that comes back through a flatten into the
    last 4-d activation (contiguous, against channels_last activations and pooling indices). A module whose
    4-d output (or its gradient) arrives in another layout is given a hook that converts it; the probe runs with
    those hooks, so a conversion upstream that fixes the rest adds no further hook."""
    leaves = [(name or "model", m) for name, m in model.named_modules() if next(m.children(), None) is None]
    xs = _to_channels_last(x[: min(x.shape[0], 8)].detach())
    found: dict[str, dict[str, nn.Module]] = {"output": {}, "gradient": {}}
    kept: list[Any] = []
    probes: list[Any] = []
    try:
        for kind, make_hook, probe in (("output", _output_hook, forward_pass(model, xs)),
                                       ("gradient", _gradient_hook, forward_backward_pass(model, xs))):
            probes = [m.register_forward_hook(make_hook(lambda name=name, m=m, kind=kind:
                                                        found[kind].setdefault(name, m)))
                      for name, m in leaves]
            probe()
            for h in probes:
                h.remove()
            kept += [m.register_forward_hook(make_hook()) for m in found[kind].values()]
    except Exception:  # noqa: BLE001 - a model that refuses hooks or the layout keeps its own activations
        for h in probes + kept:
            h.remove()
        return [], []
    return kept, [f"{name} ({kind})" for kind in found for name in found[kind]]


@contextlib.contextmanager
def channels_last_layout(model: nn.Module, x: torch.Tensor, channels_last: bool = True) -> Iterator[list[str]]:
    """The model run in ``channels_last`` for the duration: its 4-d weights (:func:`channels_last_weights`)
    and, where the model's own operations would leave that layout, hooks that keep its activations and their
    gradients in it (found by probing ``x``'s first points). Yields what the hooks fix, in words; everything is
    put back on exit. With ``channels_last`` false nothing changes. Inputs in ``channels_last`` too make the
    layout :func:`accelerated` may choose."""
    if not channels_last:
        yield []
        return
    with channels_last_weights(model):
        handles, fixed = _activation_hooks(model, x)
        try:
            yield fixed
        finally:
            for h in handles:
                h.remove()


@contextlib.contextmanager
def accelerated(model: nn.Module, x: torch.Tensor, *, mode: str = "auto", passes: float = 0.0,
                gradient_passes: float = 0.0, min_speedup: float = MIN_SPEEDUP
                ) -> Iterator[tuple[nn.Module, Plan]]:
    """The model to attack with, and the :class:`Plan` behind it.

    ``model`` must be in attack mode (eval, parameters frozen: :func:`adverse.models.attack_mode`) and return
    logits; ``x`` is a batch of the inputs it will see (a slice of at most 128 is timed). ``passes`` and
    ``gradient_passes``: how many per-sample forward passes without gradients (e.g. Square's queries times the
    points) and forward+backward passes the run may make, which ``mode="auto"`` weighs against the cost of
    measuring and compiling, and by which it weighs the layouts' timings (none given: one of each).
    ``mode="on"`` times the layouts and compiles whatever the estimate, and uses the compiled passes even where
    they were not faster (the timings say so); ``"off"`` changes nothing.
    """
    mode = check_mode(mode)
    plan = Plan()
    if mode == "off":
        yield model, plan
        return
    t_start = time.perf_counter()
    xs = x[: min(x.shape[0], 128)].detach()
    n = xs.shape[0]
    fwd = per_sample_ms(forward_pass(model, xs), n)
    plan.timings_ms["forward"] = fwd
    forward_equivalents = passes + 3 * gradient_passes  # a forward+backward pass costs about three forward passes
    run_s = fwd * forward_equivalents / 1e3
    channels_last = False
    if x.dim() == 4 and has_convolutions(model) and (mode == "on" or run_s >= LAYOUT_PAYBACK_S):
        xc = xs.contiguous(memory_format=torch.channels_last)
        # each kind of pass timed in rounds, layouts taking turns, and its fastest round kept: the first calls in
        # a layout ran up to 2x slower for a dozen calls here (the C allocator settling), so one timing right
        # after a switch misled the choice
        fb = fb_cl = fwd_cl = float("inf")
        try:
            for _ in range(LAYOUT_ROUNDS):
                fwd = min(fwd, per_sample_ms(forward_pass(model, xs), n))
                fb = min(fb, per_sample_ms(forward_backward_pass(model, xs), n))
                with channels_last_layout(model, xs):
                    fb_cl = min(fb_cl, per_sample_ms(forward_backward_pass(model, xc), n))
                    fwd_cl = min(fwd_cl, per_sample_ms(forward_pass(model, xc), n))
        except Exception as e:  # noqa: BLE001 - e.g. a forward that calls .view() on a 4-d activation
            plan.notes.append(f"the model fails in channels_last ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); it runs in its own layout")
        else:
            plan.timings_ms.update(forward=fwd, forward_backward=fb, forward_channels_last=fwd_cl,
                                   forward_backward_channels_last=fb_cl)
            # the run's time in either layout, its passes weighed by how many it makes (one of each when not told)
            f_w, g_w = (passes, gradient_passes) if passes + gradient_passes > 0 else (1.0, 1.0)
            channels_last = (g_w * fb + f_w * fwd) / (g_w * fb_cl + f_w * fwd_cl) >= LAYOUT_SPEEDUP
    with channels_last_layout(model, xs, channels_last) as fixed:
        plan.layout = "channels_last" if channels_last else "contiguous"
        if fixed:
            plan.notes.append("activations kept in channels_last at " + ", ".join(fixed))
        xl = xs.contiguous(memory_format=torch.channels_last) if channels_last else xs
        if channels_last:
            fwd = plan.timings_ms["forward_channels_last"]
            run_s = fwd * forward_equivalents / 1e3
        fast = None
        if mode == "on" or run_s >= COMPILE_PAYBACK_S:
            try:
                compiled = torch.compile(model, dynamic=True)
                fwd_c = per_sample_ms(forward_pass(compiled, xl), n)
            except Exception as e:  # noqa: BLE001 - any compiler failure leaves the model as it was
                plan.notes.append(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                                  "the model runs uncompiled")
            else:
                plan.timings_ms["forward_compiled"] = fwd_c
                if mode == "on" or fwd / fwd_c >= min_speedup:
                    fast = compiled
                else:
                    plan.notes.append(f"compiled forward passes were not faster ({fwd_c:.4f} vs {fwd:.4f} ms "
                                      "per sample); the model runs uncompiled")
        elif mode == "auto":
            plan.notes.append(f"not compiled: the run's forward passes take about {run_s:.0f} s, under the "
                              f"{COMPILE_PAYBACK_S:.0f} s that pay for compiling")
        plan.compiled = fast is not None
        plan.seconds = time.perf_counter() - t_start
        yield Accelerated(model, fast, channels_last), plan
