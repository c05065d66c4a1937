"""What a study searches: the typed, validated, versioned `StudySpec`.

One definition of every option: its type, default, bounds and help live on the dataclass field, and
the HTTP API's request body and the CLI's defaults are derived from them (`option`, `OPTIONS`). A spec
is validated once, at construction; its budget and bit-widths are objects (Budget, Bits), written as
text only in the versioned dict stored with the study.

    spec = StudySpec(budget="wbits=4.5", bits=("W8A8", "W4A8"))   # text is parsed on construction
    StudySpec.from_dict(spec.to_dict()) == spec
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from quant.budget import Budget
from quant.config import Bits, ConfigError, TimestepGroups

if TYPE_CHECKING:
    from quant.layers import Layer
    from quant.registry import Registry
    from workloads.base import Workload

SPEC_VERSION = 1
SEED_LIMIT = 2**32  # numpy's seeds stop there; estimators derive further seeds from it (seed * 1009 + g)
JsonValue = str | int | list[str]
T = TypeVar("T")


def option(default: object, help: str, *, low: int | None = None, high: int | None = None) -> Any:  # noqa: ANN401
    """A spec field with the help text and integer bounds that the API schema and the CLI read (typed Any,
    as `dataclasses.field` is to type checkers: the field's annotation is its type)."""
    meta = {"help": help, "low": low, "high": high}
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def check_text(what: str, value: str) -> None:
    """Names, paths and spec strings end up in SQL text columns, file paths and one-line messages:
    PostgreSQL refuses NUL, the OS refuses it in paths, and control characters forge output lines."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"{what} {value!r} contains a control character (e.g. NUL or newline); remove it")


def check_registered(registry: Registry[T], names: Sequence[str]) -> None:
    """At least one name, each registered in `registry` (else UnknownNameError listing the valid ones)."""
    if not names:
        raise ConfigError(f"give at least one {registry.kind}; valid {registry.kind}s: {', '.join(registry.names())}")
    for name in names:
        registry.lookup(name)


# the key=value options and an example of each, for the message of a malformed one
KEY_VALUE_EXAMPLES = {"workload_options": "guidance_scale=2.0", "estimator_options": "n_images=2"}
# estimator options the study sets itself, from its own fields
STUDY_SET_ESTIMATOR_OPTIONS = ("seed",)


def parse_options(items: Sequence[str]) -> dict[str, object]:
    """key=value items as keyword arguments: a value that parses as JSON is read as JSON (2.0, true,
    [1, 2]), anything else as text."""
    out: dict[str, object] = {}
    for text in items:
        key, _, value = text.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def estimator_params(name: str) -> list[str] | None:
    """The options estimator `name` takes from a user (None: any, it takes **kwargs)."""
    from sensitivity.base import ESTIMATORS  # lazily: torch

    params = ESTIMATORS.params(name)
    return None if params is None else [p for p in params if p not in STUDY_SET_ESTIMATOR_OPTIONS]


def check_estimator_options(estimators: Sequence[str], options: Sequence[str]) -> None:
    """Each key of `options` is taken by at least one of `estimators` (each is passed to those that take
    it), else one line naming the keys they take."""
    taken = [estimator_params(e) for e in estimators]
    if any(p is None for p in taken):
        return
    valid = sorted({k for p in taken for k in p or ()})
    for key in parse_options(options):
        if key not in valid:
            raise ConfigError(f"estimator option {key!r} is taken by none of the estimators {', '.join(estimators)}; "
                              f"valid keys: {', '.join(valid) or 'none'}")


def check_option(name: str, value: object) -> None:
    """The rules of one StudySpec option on its own (the API reports a break as that field's error)."""
    items = (value,) if isinstance(value, str) else value if isinstance(value, tuple | list) else ()
    for text in items:  # text first: every later message may quote it
        check_text(name, str(text))
    low, high = StudySpec.describe(name)[1:]
    if low is not None and high is not None and isinstance(value, int) and not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    if name == "budget" and not isinstance(value, Budget):
        Budget.parse(items)
    elif name == "bits":
        if not [Bits.parse(b) for b in items]:
            raise ConfigError("give at least one bit-width, e.g. W8A8")
    elif name in KEY_VALUE_EXAMPLES:
        for text in items:
            key, sep, _ = str(text).partition("=")
            if not sep or not key.isidentifier():
                raise ConfigError(f"{name.replace('_', ' ')[:-1]} {text!r}: write key=value, "
                                  f"e.g. {KEY_VALUE_EXAMPLES[name]}")
    elif name == "baselines":
        from search.baselines import check_baseline

        for b in items:
            check_baseline(str(b))
    elif name in ("estimators", "solver", "backend"):
        # lazily: the registries' modules import torch, and reading a stored spec needs none of them
        from quant.backends.base import BACKENDS
        from sensitivity.base import ESTIMATORS
        from solvers.base import SOLVERS

        check_registered({"estimators": ESTIMATORS, "solver": SOLVERS, "backend": BACKENDS}[name],  # type: ignore[arg-type]
                         [str(i) for i in items])


@dataclass(frozen=True)
class StudySpec:
    """What a study searches; stored as versioned JSON with the study (see the module docstring)."""

    model: str = option("builtin", "'builtin', a local diffusers pipeline directory, or a plugin workload: "
                        "package.module:Class or path/to/file.py:Class (a workloads.base.Workload).")
    budget: Budget = option("memory=0.5x", "Limits like memory=0.5x (resident bytes, relative to the target's "
                            "fastest float format), latency=1.2x, size=120MB, or the proxies wbits=4.5, bops=0.25x.")
    estimators: tuple[str, ...] = option(("gradient",), "Sensitivity estimators; per predicted metric the first "
                                         "feeds the solver, all are stored and validated.")
    solver: str = option("ilp", "ilp (budget sweep), greedy, or optuna (measured multi-objective search).")
    timestep_groups: int = option(3, "Timestep groups with their own bit-widths.", low=1, high=1000)
    num_steps: int = option(20, "Sampler steps.", low=1, high=1000)
    trials: int = option(8, "Proposals of the ilp/greedy sweep, or Optuna trials, to evaluate.", low=1, high=1000)
    bits: tuple[Bits, ...] = option(("W8A8", "W6A8", "W4A8", "W8A16", "W4A16"),
                                    "Bit-widths a layer may take, like W4A8 (16 = high precision).")
    backend: str = option("int8", "int8 (real kernels) or fake (simulated).")
    eval_samples: int = option(20, "Images of the cheap evaluation (fidelity to full precision), for every "
                               "candidate.", low=1, high=10_000)
    calibration_samples: int = option(10, "Images that calibrate activation ranges.", low=1, high=10_000)
    seed: int = option(0, "Seed of prompts, noise and estimators.", low=0, high=SEED_LIMIT - 1)
    baselines: tuple[str, ...] = option(("uniform", "float-ends", "first-last-3"),
                                        "Baselines evaluated beside the search: uniform (every bit pair of --bits), "
                                        "float-ends, first-last-N, or a bit pair like W8A8.")
    full_samples: int = option(40, "Images of the full evaluation (alignment, distribution), for candidates "
                               "that may enter the front.", low=1, high=10_000)
    patience: int = option(8, "optuna: stop after this many trials in a row that did not improve the measured "
                           "front (0: never).", low=0, high=10_000)
    workload_options: tuple[str, ...] = option((), "The workload's own options as key=value (a value that parses "
                                               "as JSON is read as JSON: 2.0, true, [1, 2]); stored with the study.")
    estimator_options: tuple[str, ...] = option((), "Estimator options as key=value, e.g. n_images=2 or probes=1 "
                                                "(JSON values as for workload options); each goes to every chosen "
                                                "estimator that takes it.")

    def __post_init__(self) -> None:
        for f in fields(self):
            check_option(f.name, getattr(self, f.name))
        # budget and bit-widths given as text become objects here, once
        object.__setattr__(self, "budget", self.budget if isinstance(self.budget, Budget) else Budget.parse(self.budget))
        object.__setattr__(self, "bits", tuple(Bits.parse(b) for b in self.bits))
        from workloads.base import is_plugin  # lazily: torch (the CLI's --help needs none of it)

        module, _, cls = self.model.rpartition(":")
        if is_plugin(self.model) and module.endswith(".py"):  # every process (Ray workers) finds the same file
            object.__setattr__(self, "model", f"{Path(module).resolve()}:{cls}")
        if self.timestep_groups > self.num_steps:
            raise ConfigError(f"timestep_groups must be between 1 and num_steps ({self.num_steps})")
        check_estimator_options(self.estimators, self.estimator_options)

    @property
    def workload_kwargs(self) -> dict[str, object]:
        """`workload_options` as keyword arguments (JSON values where they parse, else text)."""
        return parse_options(self.workload_options)

    def estimator_kwargs(self, name: str) -> dict[str, object]:
        """The `estimator_options` that estimator `name` takes, as keyword arguments."""
        params = estimator_params(name)
        return {k: v for k, v in parse_options(self.estimator_options).items() if params is None or k in params}

    def load_workload(self) -> Workload:
        """The study's workload: its model with `num_steps` and `workload_options`."""
        from workloads.base import load_workload

        return load_workload(self.model, num_steps=self.num_steps, **self.workload_kwargs)

    @property
    def groups(self) -> TimestepGroups:
        return TimestepGroups.uniform(self.num_steps, self.timestep_groups)

    def to_dict(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {"version": SPEC_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = ([str(v) for v in value] if isinstance(value, tuple)
                           else [str(lim) for lim in value.limits] if isinstance(value, Budget) else value)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, JsonValue]) -> StudySpec:
        if d.get("version") != SPEC_VERSION:
            raise ConfigError(f"study spec version {d.get('version')} is not supported (expected {SPEC_VERSION})")
        names = {f.name for f in fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(**kwargs)  # type: ignore[arg-type]

    @classmethod
    def default(cls, name: str) -> JsonValue:
        """An option's default as the CLI and the API body show it (text, not objects)."""
        return StudySpec().to_dict()[name]

    @classmethod
    def describe(cls, name: str) -> tuple[str, int | None, int | None]:
        """An option's help text and integer bounds (None: unbounded or not an integer)."""
        meta = next(f.metadata for f in fields(cls) if f.name == name)
        return meta["help"], meta["low"], meta["high"]


def check_budget(spec: StudySpec, layers: Sequence[Layer]) -> None:
    """Reject a budget that no config of `spec.bits` meets. Every budget metric grows with the bits of
    each layer independently, so the cheapest uniform config reaches each limit's lowest value.
    Latency and memory limits are checked by the solver once the study has measured the target's tables."""
    from quant.config import BitConfig
    from quant.cost import cost_of, costs, full_precision_costs

    reference = full_precision_costs(layers, spec.num_steps)
    for lim in spec.budget.limits:
        if lim.measured:  # the solver checks these against the target's tables, once measured
            continue
        low = min(cost_of(costs(BitConfig.uniform(spec.groups, b), layers), lim.metric) for b in spec.bits)
        cap = lim.absolute(reference)
        if low > cap * (1 + 1e-9):
            lowest = lim.value * low / cap
            raise ConfigError(f"budget {lim} is infeasible: the lowest {lim.metric} the bits "
                              f"{', '.join(map(str, spec.bits))} reach on this model is {lowest:.4g}"
                              f"{'x' if lim.relative else ''}; raise the limit or allow lower bits")
