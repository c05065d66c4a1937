"""Shared math and plumbing of the estimators (private): quantization deltas, the two degradation
metrics, recording the sampler's denoiser calls, replaying them with gradients, and the trajectory
gain that turns a per-step local error into its effect on the final image.

Units. Every estimator that does not measure end to end predicts the QUALITY degradation as
image MSE vs full precision (PSNR = -10 log10 MSE), in two factors:
    score(layer, g, bits) = gain[g] * sum_{steps s in g} nsr_s(layer, bits)
where nsr_s is the relative error power ||dO_s||^2 / ||O_s||^2 the quantized layer causes in the
denoiser output O_s at step s (how each estimator predicts it is its own business), and gain[g] is
the image MSE per unit of relative output-error power injected at the steps of group g, MEASURED
by adding white noise to the denoiser output at those steps only. The gain is what captures that
early (high-noise) errors are amplified along the trajectory; a purely local error would miss it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor, nn

from quant.config import HIGH_PRECISION, Bits, TimestepGroups
from quant.quantizers import activation_scale, fake_quantize_activation, quantize_weight
from sensitivity.base import EstimatorError

if TYPE_CHECKING:
    from quant.calibrate import ActivationRanges
    from workloads.base import Batch, Generation, Workload

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, enabled: bool, total: int | None = None) -> Iterator[T]:
    """A tqdm progress bar over `items` (silent when disabled)."""
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, disable=not enabled, leave=False)


# ---- quantization deltas --------------------------------------------------------------------------
def weight_delta(weight: Tensor, bits: int) -> Tensor:
    """Q_b(W) - W for the per-output-channel symmetric grid the kernels use (0 at 16 bits)."""
    w = weight.detach().float()
    if bits == HIGH_PRECISION:
        return torch.zeros_like(w)
    return quantize_weight(w, bits).dequantize() - w


def activation_delta(x: Tensor, absmax: float, bits: int) -> Tensor:
    """Q_a(x) - x for the per-tensor grid of the calibrated range (0 at 16 bits)."""
    x = x.detach().float()
    if bits == HIGH_PRECISION:
        return torch.zeros_like(x)
    return fake_quantize_activation(x, activation_scale(absmax, bits), bits) - x


def weight_of(module: nn.Module) -> Tensor:
    w = module.weight
    if not isinstance(w, Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return w


def weight_bits(bits: Sequence[Bits]) -> list[int]:
    return sorted({b.w for b in bits})


def activation_bits(bits: Sequence[Bits]) -> list[int]:
    return sorted({b.a for b in bits if b.a != HIGH_PRECISION})


def calibrate(workload: Workload, groups: TimestepGroups, bits: Sequence[Bits], batch: Batch) -> ActivationRanges | None:
    """Per-group activation ranges on `batch` when some bits quantize activations, else None."""
    if not activation_bits(bits):
        return None
    from quant.calibrate import calibrate_activations

    return calibrate_activations(workload.denoiser, groups, workload.calibration_run(batch))


# ---- the two measured metrics ------------------------------------------------------------------------
def image_mse(reference: Tensor, test: Tensor) -> float:
    """Quality degradation: mean squared error of images in [0, 1] vs full precision."""
    return float((reference.double() - test.double()).pow(2).mean())


def alignment_drop(reference: Mapping[str, Tensor], test: Mapping[str, Tensor]) -> float:
    """Alignment degradation from per-image alignment scores (`Workload.alignment_scores`) of the
    full-precision and the quantized images of the same batch: for each metric, the share of the FP
    score lost image by image, mean_i max(0, ref_i - test_i) / mean_i |ref_i| (scores live on different
    scales), averaged over the metrics; 0 for identical images or without alignment metrics.

    Paired and continuous on purpose: an image that happens to follow its prompt better does not
    cancel one that got worse (quantization noise moves scores both ways; a difference of batch means
    would be mostly that noise), and a continuous score (the classifier's probability of the prompted
    digit, not whether its argmax is right) moves with every image instead of in steps of 1/B."""
    keys = [k for k in reference if k in test]
    if not keys:
        return 0.0
    total = 0.0
    for k in keys:
        ref, tst = reference[k].double(), test[k].double()
        if ref.shape != tst.shape:
            raise ValueError(f"alignment score {k!r}: {tuple(ref.shape)} reference vs {tuple(tst.shape)} test values; "
                             "score the same batch")
        total += float((ref - tst).clamp(min=0).mean()) / max(float(ref.abs().mean()), 1e-12)
    return total / len(keys)


# ---- recording and replaying the sampler's denoiser calls ---------------------------------------------
@dataclass
class StepCall:
    """One denoiser call of a sampling run: its step, inputs, and the squared norm of its output."""

    step: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    out_sq: float = 0.0


def first_tensor(output: Any) -> Tensor:
    """The prediction inside a denoiser output (a tensor, a tuple starting with one, or `.sample`)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    sample = getattr(output, "sample", None)
    if isinstance(sample, Tensor):
        return sample
    raise TypeError(f"cannot find the prediction tensor in a denoiser output of type {type(output).__name__}")


def _replace_first(output: Any, new: Tensor) -> Any:
    if isinstance(output, Tensor):
        return new
    if isinstance(output, tuple | list):
        return type(output)([new, *output[1:]])
    output.sample = new
    return output


def _detach(value: Any, previous: Sequence[Tensor], kept: list[Tensor]) -> Any:
    """A detached copy of a call's inputs, compact: a tensor equal to one of the `previous` call's (the
    prompt embeddings, passed unchanged at every step) is shared, not copied again. Every tensor of
    this call goes to `kept`, for the next call to compare with."""
    if isinstance(value, Tensor):
        same = (p for p in previous if p.shape == value.shape and p.dtype == value.dtype and torch.equal(p, value))
        copy = next(same, None)
        if copy is None:
            copy = value.detach().clone()
        kept.append(copy)
        return copy
    if isinstance(value, dict):
        return {k: _detach(v, previous, kept) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_detach(v, previous, kept) for v in value)
    return value


@contextmanager
def _denoiser_hooks(denoiser: nn.Module, pre: Callable[..., Any] | None = None,
                    post: Callable[..., Any] | None = None) -> Iterator[None]:
    handles = []
    try:
        if pre is not None:
            handles.append(denoiser.register_forward_pre_hook(pre, with_kwargs=True))
        if post is not None:
            handles.append(denoiser.register_forward_hook(post))
        yield
    finally:
        for h in handles:
            h.remove()


def record_calls(workload: Workload, batch: Batch,
                 on_step: Callable[[int], None] | None = None) -> tuple[Generation, list[StepCall]]:
    """Generate `batch` in full precision, recording every denoiser call with its step (inputs that do
    not change between calls are stored once: what grows with the steps is the latents alone);
    `on_step(i)` is told each step too (a calibration's `set_step`)."""
    calls: list[StepCall] = []
    step = [0]
    previous: list[Tensor] = []

    def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kept: list[Tensor] = []
        calls.append(StepCall(step[0], _detach(args, previous, kept), _detach(kwargs, previous, kept)))
        previous[:] = kept

    def post(_m: nn.Module, _args: tuple[Any, ...], output: Any) -> None:
        calls[-1].out_sq = float(first_tensor(output).detach().double().pow(2).sum())

    def at_step(i: int) -> None:
        step[0] = i
        if on_step is not None:
            on_step(i)

    with _denoiser_hooks(workload.denoiser, pre, post):
        gen = workload.generate(batch, on_step=at_step)
    return gen, calls


def trajectory_gains(workload: Workload, batch: Batch, groups: TimestepGroups, reference: Generation,
                     rel_noise: float, seed: int) -> list[float]:
    """Per group: image MSE per unit of relative error power injected in the denoiser output at the
    group's steps (white noise of relative RMS `rel_noise` at each of those steps). See module doc."""
    gains = []
    step = [0]

    def on_step(i: int) -> None:
        step[0] = i

    for g, (lo, hi) in enumerate(groups.spans):
        gen = torch.Generator().manual_seed(seed * 1009 + g)

        def post(_m: nn.Module, _args: tuple[Any, ...], output: Any, lo: int = lo, hi: int = hi,
                 gen: torch.Generator = gen) -> Any:
            if not lo <= step[0] <= hi:
                return None
            out = first_tensor(output)
            rms = out.detach().float().pow(2).mean().sqrt()
            noise = torch.randn(out.shape, generator=gen, dtype=torch.float32).to(out.dtype)
            return _replace_first(output, out + rel_noise * rms * noise)

        with _denoiser_hooks(workload.denoiser, post=post):
            test = workload.generate(batch, on_step=on_step)
        gains.append(image_mse(reference.images, test.images) / ((hi - lo + 1) * rel_noise**2))
    return gains


WeightSink = Callable[[str, Tensor], None]
"""Told (layer, gradient of its weight) once per probe, as soon as autograd has that gradient."""
InputSink = Callable[[str, Tensor, Tensor], None]
"""Told (layer, its input at one call, the gradient w.r.t. that input) once per call per probe."""


@dataclass
class Tape:
    """One replayed forward's taped layer inputs, the scalar zero leaves added to them (so that the
    backward reaches every input, even the first layer's, whose input needs no gradient otherwise),
    and where the current probe's gradients go (`probe` sets the sinks)."""

    weights: list[Tensor] = field(default_factory=list)
    inputs: dict[str, list[Tensor]] = field(default_factory=dict)
    zeros: list[Tensor] = field(default_factory=list)
    on_weight: WeightSink | None = None
    on_input: InputSink | None = None

    def clear(self) -> None:
        self.inputs.clear()
        self.zeros.clear()


@contextmanager
def differentiable(denoiser: nn.Module, modules: Mapping[str, nn.Module], want_inputs: bool) -> Iterator[Tape]:
    """Make the weights of `modules` (only) require grad and, if asked, tape their inputs; every flag,
    hook and `.grad` is restored on exit, so the model is left as found.

    Memory: a weight's gradient is handed to `tape.on_weight` by a post-accumulate hook and dropped at
    once, so at most one layer's gradient exists at a time (not a copy of the model); a layer input's
    gradient is handed to `tape.on_input` by a tensor hook during the backward and never stored. The
    taped input is the tensor the layer itself saves for its backward (no extra activation copy)."""
    flags = {p: p.requires_grad for p in denoiser.parameters()}
    saved_grads = {p: p.grad for p in denoiser.parameters()}
    tape = Tape()
    handles: list[Any] = []
    by_weight: dict[Tensor, list[str]] = {}  # a weight shared by several layers is one leaf
    for n, m in modules.items():
        by_weight.setdefault(weight_of(m), []).append(n)

    def on_grad(w: Tensor) -> None:
        grad, w.grad = w.grad, None
        if grad is not None and tape.on_weight is not None:
            for n in by_weight[w]:
                tape.on_weight(n, grad)

    def tap(name: str) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
        def pre(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            z = torch.zeros((), dtype=x.dtype, requires_grad=True)
            y = x + z
            seen = y.detach()

            def on_input_grad(gy: Tensor) -> None:
                if tape.on_input is not None:
                    tape.on_input(name, seen, gy)

            y.register_hook(on_input_grad)
            tape.inputs.setdefault(name, []).append(seen)
            tape.zeros.append(z)
            return (y, *args[1:])

        return pre

    try:
        for p in flags:
            p.requires_grad_(False)
            p.grad = None
        for w in by_weight:
            w.requires_grad_(True)
            handles.append(w.register_post_accumulate_grad_hook(on_grad))
        tape.weights = list(by_weight)
        if want_inputs:
            handles += [m.register_forward_pre_hook(tap(n)) for n, m in modules.items()]
        yield tape
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = saved_grads[p]


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _tensors(v)


def _rows(value: Any, lo: int, hi: int, n: int) -> Any:
    if isinstance(value, Tensor):
        return value[lo:hi] if value.dim() and value.shape[0] == n else value
    if isinstance(value, dict):
        return {k: _rows(v, lo, hi, n) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_rows(v, lo, hi, n) for v in value)
    return value


# `micro_batch=None` (the default) replays whole calls on denoisers below this many bytes of weights,
# where a batch is much faster than its rows one at a time and its graph is small, and one row at a time
# above it (an SD-size UNet's graph at batch 8 would not fit beside the model)
WHOLE_CALLS_BELOW_BYTES = 256 * 2**20


def check_micro_batch(rows: int | None) -> int | None:
    """`rows` if it is a valid `micro_batch` option, else a one-line error naming the fix."""
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
        raise EstimatorError(f"micro_batch must be an int >= 0 (rows per replay; 0 = whole calls) or None (by "
                             f"model size), got {rows!r}")
    return rows


def micro_batch_rows(rows: int | None, denoiser: nn.Module) -> int:
    """The rows per replay: `rows`, or for None whole calls (0) on a denoiser under
    WHOLE_CALLS_BELOW_BYTES of parameters and one row at a time on a bigger one."""
    if rows is not None:
        return rows
    size = sum(p.numel() * p.element_size() for p in denoiser.parameters())
    return 0 if size < WHOLE_CALLS_BELOW_BYTES else 1


def micro_batches(call: StepCall, rows: int) -> list[StepCall]:
    """`call` split into calls of at most `rows` batch rows (`rows` 0: the call as recorded), so that a
    replay's graph holds the activations of those rows only, whatever the number of images.

    The batch size is the first dimension of the call's first tensor (the latents); every input tensor
    with that first dimension is sliced, others (a scalar timestep) are passed whole. Rows of a denoiser
    call are independent samples (classifier-free guidance's unconditional and conditional rows too),
    so the rows' outputs are the full call's. A part keeps the whole call's ||O||^2: relative units
    stay those of the call, and summing the parts' squared gradients estimates the same Fisher / trace
    (the cross terms between rows that one batched probe adds have expectation 0)."""
    first = next(_tensors((call.args, call.kwargs)), None)
    n = first.shape[0] if first is not None and first.dim() else 0
    if rows <= 0 or n <= rows:
        return [call]
    return [StepCall(call.step, _rows(call.args, lo, lo + rows, n), _rows(call.kwargs, lo, lo + rows, n), call.out_sq)
            for lo in range(0, n, rows)]


def replay(denoiser: nn.Module, call: StepCall, tape: Tape) -> Tensor:
    """Re-run a recorded denoiser call with autograd on (the graph lives as long as the output)."""
    tape.clear()
    with torch.enable_grad():
        return first_tensor(denoiser(*call.args, **call.kwargs))


def rademacher(like: Tensor, gen: torch.Generator) -> Tensor:
    """A +-1 probe vector shaped like `like` (lower variance than Gaussian for Hutchinson)."""
    return (torch.randint(0, 2, like.shape, generator=gen) * 2 - 1).to(like.dtype)


def probe(out: Tensor, tape: Tape, v: Tensor, on_weight: WeightSink, on_input: InputSink | None = None,
          retain: bool = True) -> None:
    """One backward of v . O through a `replay`ed output, streaming gradients to the sinks. E_v[(J^T v)^2]
    is the diagonal of J^T J (the Gauss-Newton matrix, = the Fisher of a Gaussian output), so its sum
    over a layer is Hutchinson's estimate of that layer's trace. A layer that gets no gradient (unused in
    this call) is not told. `retain=False` frees the graph (the last probe of a call)."""
    tape.on_weight, tape.on_input = on_weight, on_input
    try:
        torch.autograd.backward(out, grad_tensors=v, inputs=[*tape.weights, *tape.zeros], retain_graph=retain)
    finally:
        tape.on_weight = tape.on_input = None
        for z in tape.zeros:
            z.grad = None


def relative_sq(grad: Tensor, call: StepCall) -> Tensor:
    """grad^2 / ||O||^2: a squared gradient in units of relative output-error power."""
    return grad.detach().float().pow(2) * (1.0 / max(call.out_sq, 1e-30))


def group_steps(groups: TimestepGroups, calls: Sequence[StepCall]) -> list[int]:
    """The timestep group of each recorded call."""
    return [groups.group_of(c.step) for c in calls]


@dataclass
class Prepared:
    """What the trajectory-based estimators share: the calibration batch, its full-precision run with
    every denoiser call recorded, the per-group trajectory gains, the layers and activation ranges."""

    batch: Batch
    reference: Generation
    calls: list[StepCall]
    gains: list[float]
    modules: dict[str, nn.Module]
    ranges: ActivationRanges | None

    def absmax(self, name: str, group: int) -> float:
        assert self.ranges is not None
        return self.ranges.absmax(name, group)


def prepare(workload: Workload, names: Sequence[str], bits: Sequence[Bits], groups: TimestepGroups,
            n_images: int, seed: int, gain_noise: float, trajectory: bool) -> Prepared:
    """Calibration batch -> FP run (recorded, and calibrating the activation ranges where some bits
    quantize activations: one run, not two) -> gains (1 per group when `trajectory` is off)."""
    from quant.calibrate import calibrate_activations
    from quant.layers import quantizable_modules

    found = quantizable_modules(workload.denoiser)
    batch = workload.batch(n_images, split="calibration")
    recorded: list[tuple[Generation, list[StepCall]]] = []

    def run(set_step: Callable[[int], None] | None = None) -> None:
        recorded.append(record_calls(workload, batch, set_step))

    # the observers only read the activations: the recorded run is the plain full-precision one
    ranges = calibrate_activations(workload.denoiser, groups, run) if activation_bits(bits) else None
    if not recorded:
        run()
    (reference, calls), = recorded
    gains = (trajectory_gains(workload, batch, groups, reference, gain_noise, seed) if trajectory
             else [1.0] * len(groups))
    return Prepared(batch, reference, calls, gains, {n: found[n][0] for n in names}, ranges)


@contextmanager
def layer_hooks(modules: Mapping[str, nn.Module],
                make: Callable[[str], Callable[[nn.Module, tuple[Any, ...], Any], None]]) -> Iterator[None]:
    """Temporary forward hooks `make(name)` on every layer; removed on exit even on error."""
    handles = []
    try:
        handles = [m.register_forward_hook(make(n)) for n, m in modules.items()]
        yield
    finally:
        for h in handles:
            h.remove()
