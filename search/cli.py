"""The `bitsearch` command line. One function per command; each docstring is its --help, with an example.

torch and diffusers are imported inside the commands that need them so that `bitsearch --help` (and
commands that only talk to the database) start fast.
"""

from __future__ import annotations

import inspect as pyinspect  # `inspect` is a command here
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.progress import ProgressColumn, Task
from rich.text import Text
from typer.core import TyperGroup

# Format names for help and checks come from the format registries (a light import: no torch).
from search.exports import FORMATS, IMPORT_FORMATS, PER_LAYER_FORMATS, TWO_FILES
from search.spec import StudySpec

if TYPE_CHECKING:
    from quant.config import BitConfig
    from quant.layers import Layer
    from search.executors.base import Executor
    from search.front import FrontPoint
    from search.plan import Plan
    from search.study import Study
    from storage import Storage

# Exit status for a bad argument or input (the same code click uses for usage errors).
EXIT_USAGE = 2


def _fail(err: BaseException | str) -> NoReturn:
    """Report an expected error in one line on stderr and exit with EXIT_USAGE."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _expected_error(err: Exception) -> str | None:
    """The one line to show for an error the user's input or machine causes (any of our errors: they
    all derive from `quant.errors.BitsearchError`; a file that cannot be read or written); None for
    anything else: a bug, which keeps its traceback."""
    from quant.errors import BitsearchError
    from solvers.problem import SolverError

    if isinstance(err, typer.Exit | typer.Abort | typer.TyperException):  # usage errors, exits: typer's own
        return None
    if isinstance(err, SolverError):  # no solution and no proof of infeasibility: say which solver and why
        return f"solver failed: {err}"
    if isinstance(err, BitsearchError):
        return str(err)
    if isinstance(err, OSError):
        return f"{err.filename}: {err.strerror}" if err.filename and err.strerror else str(err)
    from sqlalchemy.exc import OperationalError

    if isinstance(err, OperationalError):  # the database refused or went away (read-only, full, unreachable)
        from storage.migrate import explain

        return f"database error: {explain(err)}"
    return None


class _Group(TyperGroup):
    """Runs every command: expected errors from anywhere inside one are reported in one line by `_fail`
    (commands need not catch each one), anything else keeps its traceback."""

    def invoke(self, ctx: Any) -> Any:  # Any: typer's vendored click Context is not public
        try:
            return super().invoke(ctx)
        except Exception as err:
            line = _expected_error(err)
            if line is None:
                raise
            _fail(line)


app = typer.Typer(
    name="bitsearch",
    help="Mixed-precision quantization search for diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    cls=_Group,
    pretty_exceptions_enable=False,  # a traceback only for bugs (see _Group), printed plainly
)

# Libraries that report their own import-time trouble on stderr: torchao's CUDA-only extensions that
# cannot load on a CPU machine, torch's pytree deprecations, diffusers/transformers notes (accelerate
# missing, torchao tensor types), Ray's startup. Nothing there is for the user of a command.
_QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "diffusers", "transformers", "ray", "accelerate", "optuna")
_THIRD_PARTY = r"(torch|torchao|torchvision|diffusers|transformers|accelerate|huggingface_hub|safetensors|pulp|" \
               r"highspy|optuna|ray|numpy|scipy|matplotlib|PIL)(\.|$)"
_QUIET_ENV = {"DIFFUSERS_VERBOSITY": "error", "TRANSFORMERS_VERBOSITY": "error",
              "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _quiet_third_party() -> Callable[[], None]:
    """Hide third-party warnings, log messages below ERROR and loading bars (`--verbose` keeps them).
    Returns what puts everything back, so a process that runs commands in-process (tests, a notebook
    calling the app) keeps its own settings."""
    saved_filters = warnings.catch_warnings()  # entered now, exited by restore()
    saved_filters.__enter__()
    saved_levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    saved_env = {var: os.environ.get(var) for var in _QUIET_ENV}
    warnings.filterwarnings("ignore", module=_THIRD_PARTY)
    # raised by libraries on behalf of their caller (stacklevel), so they are attributed to our modules
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # diffusers and transformers reset their loggers' levels when first imported, from these variables
    # (which Ray workers inherit too); their weight-loading progress bars follow huggingface_hub's switch
    for var, value in _QUIET_ENV.items():
        os.environ.setdefault(var, value)
    bars = sys.modules.get("transformers.utils.logging")  # already imported: the variable came too late
    bars_were_on = bars is not None and bars.is_progress_bar_enabled()
    if bars is not None:
        bars.disable_progress_bar()

    def restore() -> None:
        saved_filters.__exit__(None, None, None)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        for var, was in saved_env.items():
            if was is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = was
        if bars is not None and bars_were_on:
            bars.enable_progress_bar()

    return restore


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show third-party warnings and log messages "
                                          "(hidden by default).")] = False,
) -> None:
    """Mixed-precision quantization search for diffusion models."""
    if not verbose:
        ctx.call_on_close(_quiet_third_party())


@app.command()
def inspect(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Diffusers pipeline directory, model directory (config.json), built-in config name "
            "(sd15-unet, sdxl-unet, dit-xl-2, pixart-alpha), or a workload (builtin, package.module:Class, "
            "file.py:Class: its denoiser on the inputs of its first sampler call).",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")] = False,
    top: Annotated[
        int | None,
        typer.Option("--top", min=1, help="Table shows only the N layers with most MACs (totals cover all)."),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size of the measured forward.")] = 1,
    resolution: Annotated[
        int | None,
        typer.Option(
            "--resolution",
            min=1,
            help="Denoiser input height = width, in latent pixels (SD-1.5: 64 for 512 px images). "
            "Default: the model's config sample_size.",
        ),
    ] = None,
) -> None:
    """List every quantizable layer (nn.Linear, nn.Conv2d) of a denoiser with its MACs per forward.

    The model is built on the meta device (no weights are read), so even SDXL takes seconds.

    Example:

        bitsearch inspect --model sdxl-unet --top 15

        bitsearch inspect --model ./my-sd15-pipeline --resolution 96 --json > layers.json
    """
    from quant.layers import inventory, totals
    from workloads.base import load_model

    try:
        found = load_model(model, weights=False, batch=batch, resolution=resolution)
        denoiser, inputs = found.module, found.inputs
        layers = inventory(denoiser, inputs)
    except (ValueError, RuntimeError) as err:  # ModelLoadError, WorkloadError, unsupported model, failed forward
        _fail(err)

    summary = totals(layers)
    cls = type(denoiser).__name__
    if as_json:
        doc = {
            "model": model,
            "class": cls,
            "inputs": _shapes(inputs),
            "layers": [
                {
                    "fqn": x.fqn,
                    "kind": x.kind,
                    "weight_shape": list(x.weight_shape),
                    "params": x.params,
                    "macs": x.macs,
                }
                for x in layers
            ],
            "totals": summary,
        }
        json.dump(doc, sys.stdout)
        sys.stdout.write("\n")
        return
    shapes = ", ".join(f"{k} {'x'.join(map(str, v)) if v else v}" for k, v in _shapes(inputs).items())
    _print_inventory_table(f"{model} ({cls})\ninputs: {shapes}", layers, summary, top)


def _print_inventory_table(title: str, layers: list[Layer], summary: dict[str, Any], top: int | None) -> None:
    from rich.console import Console
    from rich.table import Table

    shown = sorted(layers, key=lambda x: x.macs, reverse=True)[:top] if top else layers
    table = Table(title=title, title_justify="left")
    table.add_column("FQN", overflow="fold")
    table.add_column("kind")
    table.add_column("weight shape")
    table.add_column("params", justify="right")
    table.add_column("MACs", justify="right")
    for x in shown:
        table.add_row(x.fqn, x.kind, "x".join(map(str, x.weight_shape)), f"{x.params:,}", _si(x.macs))
    if top and top < len(layers):
        table.caption = f"top {top} of {len(layers)} layers by MACs"
    console = Console()
    console.print(table)
    console.print(
        f"total: {summary['layers']} layers ({summary['linear']} linear, {summary['conv']} conv), "
        f"{summary['params']:,} params, {summary['gmacs']:,.2f} GMACs"
    )


def _shapes(inputs: dict[str, Any], prefix: str = "") -> dict[str, list[int] | None]:
    """Tensor input shapes by name, nested dicts flattened to `outer.inner`; anything else (None, a
    flag such as return_dict) is None."""
    out: dict[str, list[int] | None] = {}
    for key, value in inputs.items():
        if isinstance(value, dict):
            out |= _shapes(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = list(value.shape) if hasattr(value, "shape") else None
    return out


def _si(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


# ---- studies ---------------------------------------------------------------------------------------

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL or SQLite file (default ./bitsearch.db).")]


def _progress(message: str) -> None:
    typer.echo(f"· {message}", err=True)


# Execution options (launch and resume): how evaluations run, not what is searched, so they are not
# part of the stored study spec and `resume` may choose them afresh.
ExecutorOption = Annotated[str | None, typer.Option("--executor", help="local (in this process) or ray "
                                                    "(default: ray when --workers > 1, else local).")]
WorkersOption = Annotated[int, typer.Option("--workers", min=1, help="Ray workers; each loads the model once.")]
ThreadsOption = Annotated[int, typer.Option("--threads-per-worker", min=1, help="torch/OpenMP threads per worker "
                                            "(oversubscribing cores is many times slower).")]
RayAddressOption = Annotated[str | None, typer.Option("--ray-address", help="Ray cluster to join (implies --executor "
                                                      "ray; use a PostgreSQL --db then). Default: a local Ray.")]
HeartbeatOption = Annotated[float, typer.Option("--heartbeat-timeout", min=0.1, help="Seconds without a heartbeat "
                                                "after which a worker's candidate goes back to the queue.")]
MaxSecondsOption = Annotated[float | None, typer.Option("--max-seconds", min=0, help="Wall-clock budget for the "
                                                        "evaluations; resume continues later.")]


def _executor(executor: str | None, workers: int, threads: int, address: str | None, heartbeat: float) -> Executor:
    """The executor the options ask for; a contradiction is a usage error."""
    from search.executors import executor_names, get_executor

    name = executor or ("ray" if workers > 1 or address else "local")
    if name not in executor_names():
        _fail(f"unknown executor {name!r}; valid: {', '.join(executor_names())}")
    if name == "local":
        if workers > 1:
            _fail("the local executor runs one worker; use --executor ray for --workers > 1")
        if address:
            _fail("--ray-address needs --executor ray")
        return get_executor("local", threads_per_worker=threads, lease_timeout_s=heartbeat)
    return get_executor(name, workers=workers, threads_per_worker=threads, address=address,
                        lease_timeout_s=heartbeat)


def _spec_option(field: str, flag: str, note: str = "") -> Any:  # noqa: ANN401  (typer.Option is typed Any)
    """A `launch` option for StudySpec field `field`: its help, bounds and default come from the spec."""
    text, low, high = StudySpec.describe(field)
    default = StudySpec.default(field)
    shown = ",".join(default) if isinstance(default, list) else str(default)
    return typer.Option(flag, help=f"{text}{note}", min=low, max=high, show_default=shown)


def _items(text: str | None) -> tuple[str, ...] | None:
    """A comma-separated option as a tuple (None: not given)."""
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


# Named `launch` options for the diffusers workload's common knobs: sugar for `--workload-option KEY=VALUE`
# (stored as workload options, one definition), so any workload that takes the key takes the flag, and
# one that does not says so in one line. flag -> (workload option key, help).
WORKLOAD_FLAGS: dict[str, tuple[str, str]] = {
    "resolution": ("resolution", "Image height = width in pixels (diffusers; default: the pipeline's sample "
                   "size). Same as --workload-option resolution=N."),
    "guidance": ("guidance_scale", "Classifier-free guidance scale (default: the workload's). Same as "
                 "--workload-option guidance_scale=X."),
    "prompts": ("prompts", "Text file with one prompt per line (diffusers; default: its built-in prompts). "
                "Same as --workload-option prompts=FILE."),
    "scheduler": ("scheduler", "Diffusers scheduler class to sample with, built from the saved one's config, "
                  "e.g. DDIMScheduler. Same as --workload-option scheduler=NAME."),
    "dtype": ("torch_dtype", "Torch dtype of the pipeline: float32 (default) or bfloat16 (half the float model's "
              "memory; the study then runs, and compares against, the bf16 model as loaded). Same as "
              "--workload-option torch_dtype=NAME."),
}


def _workload_flag(flag: str) -> Any:  # noqa: ANN401  (typer.Option is typed Any)
    return typer.Option(f"--{flag}", help=WORKLOAD_FLAGS[flag][1], min=1 if flag == "resolution" else None)


def _workload_options(options: list[str], named: Mapping[str, object | None]) -> tuple[str, ...]:
    """`--workload-option` items plus the named workload flags given, as key=value items; a key given
    both ways is a usage error. A prompt file is made absolute (resume and workers run elsewhere)."""
    from pathlib import Path

    out = list(options)
    keys = {o.partition("=")[0] for o in options}
    for flag, value in named.items():
        if value is None:
            continue
        key = WORKLOAD_FLAGS[flag][0]
        if key in keys:
            _fail(f"--{flag} and --workload-option {key}=... both set {key}; give one")
        if flag == "prompts":
            if not Path(str(value)).is_file():
                _fail(f"--prompts {value}: no such file; give a text file with one prompt per line")
            value = str(Path(str(value)).resolve())
        out.append(f"{key}={_option_text(value)}")
    return tuple(out)


def _option_text(value: object) -> str:
    """A key=value item's value: text as it is unless JSON would read it as something else ("true",
    "2"), then JSON, so `StudySpec.workload_kwargs` gives back exactly `value`."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            return value
    return json.dumps(value)


MemoryLimitOption = Annotated[str | None, typer.Option(
    "--memory-limit", help="Refuse a study whose predicted peak resident memory exceeds this, e.g. 12GB (default "
    "for plan and --dry-run: the machine's available memory, MemAvailable).")]
EstimatorOptionOption = Annotated[list[str] | None, _spec_option("estimator_options", "--estimator-option",
                                                                 " Repeatable.")]


@app.command()
def launch(
    name: Annotated[str, typer.Option("--name", help="Unique study name.")],
    model: Annotated[str | None, _spec_option("model", "--model")] = None,
    budget: Annotated[list[str] | None, _spec_option("budget", "--budget", " Repeatable.")] = None,
    estimators: Annotated[str | None, _spec_option("estimators", "--estimators", " Comma-separated.")] = None,
    solver: Annotated[str | None, _spec_option("solver", "--solver")] = None,
    timestep_groups: Annotated[int | None, _spec_option("timestep_groups", "--timestep-groups")] = None,
    trials: Annotated[int | None, _spec_option("trials", "--trials")] = None,
    patience: Annotated[int | None, _spec_option("patience", "--patience")] = None,
    steps: Annotated[int | None, _spec_option("num_steps", "--steps")] = None,
    bits: Annotated[str | None, _spec_option("bits", "--bits", " Comma-separated.")] = None,
    baselines: Annotated[str | None, _spec_option("baselines", "--baselines", " Comma-separated.")] = None,
    eval_samples: Annotated[int | None, _spec_option("eval_samples", "--eval-samples")] = None,
    full_samples: Annotated[int | None, _spec_option("full_samples", "--full-samples")] = None,
    calibration_samples: Annotated[int | None, _spec_option("calibration_samples", "--calibration-samples")] = None,
    seed: Annotated[int | None, _spec_option("seed", "--seed")] = None,
    backend: Annotated[str | None, _spec_option("backend", "--backend")] = None,
    workload_option: Annotated[list[str] | None, _spec_option("workload_options", "--workload-option",
                                                              " Repeatable.")] = None,
    resolution: Annotated[int | None, _workload_flag("resolution")] = None,
    guidance: Annotated[float | None, _workload_flag("guidance")] = None,
    prompts: Annotated[str | None, _workload_flag("prompts")] = None,
    scheduler: Annotated[str | None, _workload_flag("scheduler")] = None,
    dtype: Annotated[str | None, _workload_flag("dtype")] = None,
    estimator_option: EstimatorOptionOption = None,
    memory_limit: MemoryLimitOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (as `bitsearch plan`) and stop: "
                                          "nothing is written.")] = False,
    db: DbOption = None,
    executor: ExecutorOption = None,
    workers: WorkersOption = 1,
    threads_per_worker: ThreadsOption = 1,
    ray_address: RayAddressOption = None,
    heartbeat_timeout: HeartbeatOption = 60.0,
    max_seconds: MaxSecondsOption = None,
) -> None:
    """Launch a budget-constrained search and run it to the end (resumable with `bitsearch resume`).

    With --memory-limit the plan (see `bitsearch plan`) runs first and a study that will not fit is
    refused; --dry-run prints the plan and stops.

    Example:

        bitsearch launch --name demo --model builtin --budget wbits=4.5 --timestep-groups 3 --trials 8

        bitsearch launch --name demo2 --workers 2 --threads-per-worker 1   # two Ray workers

        bitsearch launch --name tuned --solver optuna --trials 24   # then: optuna-dashboard sqlite:///bitsearch.db

        bitsearch launch --name big --model ./sd15 --resolution 256 --dtype bfloat16 --dry-run
    """
    from quant.errors import BitsearchError
    from search.sizing import sized_spec
    from search.study import Study

    named = {"resolution": resolution, "guidance": guidance, "prompts": prompts, "scheduler": scheduler,
             "dtype": dtype}
    options = _workload_options(workload_option or [], named)
    given: dict[str, Any] = {"model": model, "budget": None if budget is None else tuple(budget),
             "estimators": _items(estimators),
             "solver": solver, "timestep_groups": timestep_groups, "num_steps": steps, "trials": trials,
             "patience": patience, "bits": _items(bits), "baselines": _items(baselines), "eval_samples": eval_samples,
             "full_samples": full_samples, "calibration_samples": calibration_samples, "seed": seed,
             "backend": backend, "workload_options": options or None,
             "estimator_options": None if estimator_option is None else tuple(estimator_option)}
    planned: Plan | None = None
    try:  # options not given take the spec's defaults
        spec, sized = sized_spec(given)
        runner = _executor(executor, workers, threads_per_worker, ray_address, heartbeat_timeout)
        if dry_run or memory_limit is not None:
            planned = _plan(spec, memory_limit, threads_per_worker, runner.parallelism)
            if dry_run:
                if sized:
                    _progress(sized)
                return
        study = Study.create(name, spec, db)
    except (BitsearchError, ValueError) as e:  # ValueError: solvers' own option checks (not ours yet)
        _fail(e)
    if sized:  # once the study exists: a refused one is one line
        _progress(sized)
    _run(study, runner, threads_per_worker, max_seconds, planned)


def _plan(spec: StudySpec, memory_limit: str | None, threads: int, workers: int) -> Plan:
    """Measure and print `spec`'s plan; refuse (one line naming the stage) one that will not fit."""
    from rich.console import Console
    from rich.table import Table

    from quant.resident import release_freed
    from search.executors import pin_threads
    from search.plan import available_memory, check_fits, measure_plan, parse_bytes, predict

    limit = available_memory() if memory_limit is None else parse_bytes(memory_limit)  # bad input fails first
    pin_threads(threads)  # measured at the thread count the study will run with
    _progress("plan: loading the model, timing one denoiser call, one calibration call, one applied config "
              "and one estimator step")
    plan = predict(spec, measure_plan(spec, workers), workers)
    release_freed()  # the plan's model and what it freed go before a study loads its own
    table = Table("stage", "time", "peak resident", "how predicted", title_justify="left",
                  title=f"plan: {spec.model}, {spec.num_steps} steps, {spec.timestep_groups} groups, "
                        f"{','.join(spec.estimators)}")
    for stage in plan.stages:
        table.add_row(stage.name, _duration(stage.seconds), _size(stage.peak_bytes), stage.how)
    console = Console()
    console.print(table)
    m = plan.measured
    typer.echo(f"total: about {_duration(plan.total_seconds)} of CPU time ({threads} thread(s)); peak "
               f"{_size(plan.peak.peak_bytes)} in {plan.peak.name}; memory limit {_size(limit)}"
               f"{' (available now)' if memory_limit is None else ''}. Measured: one denoiser call "
               f"{m.call.seconds[0] * 1e3:.3g} ms at batch 1, the process with the model loaded {_size(m.loaded_bytes)}.")
    check_fits(plan, limit)
    return plan


def _duration(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds < 120 else f"{seconds / 60:.3g} min" if seconds < 7200 else \
        f"{seconds / 3600:.3g} h"


def _size(nbytes: float) -> str:
    return f"{nbytes / 1e6:.4g} MB" if nbytes < 1e9 else f"{nbytes / 1e9:.4g} GB"


def plan(**options: Any) -> None:  # noqa: ANN401  (typer passes launch's options by name)
    """Predict a study's time and peak memory per stage before running it, and refuse one that will not fit.

    Takes launch's options (what is searched, and the threads and workers it runs with: with --workers N
    the evaluations' peak counts N models, one per Ray worker). Loads the model and measures
    one denoiser call (after a warm-up), one calibration call, one applied config and one estimator step
    (1 image, 2 steps), then prints each stage (calibration, sensitivity, latency table, each evaluation,
    all evaluations) with its predicted CPU time and peak resident memory. A study whose predicted peak
    exceeds --memory-limit (default: the machine's available memory) is refused, in one line naming the
    stage. The model of each stage is written in search/plan.py. `launch --dry-run` prints the same.

    Example:

        bitsearch plan --model ./sd15 --resolution 256 --steps 10 --estimators kurtosis --memory-limit 12GB
    """
    launch(name="plan", dry_run=True, **options)


# plan takes launch's options but the name, --dry-run and how evaluations are executed: typer reads them
# from this signature (one definition of each option, launch's)
_NOT_PLANNED = {"name", "dry_run", "db", "executor", "ray_address", "heartbeat_timeout", "max_seconds"}
_LAUNCH = pyinspect.signature(launch, eval_str=True)
plan.__signature__ = _LAUNCH.replace(  # type: ignore[attr-defined]
    parameters=[p for p in _LAUNCH.parameters.values() if p.name not in _NOT_PLANNED])
app.command("plan")(plan)


@app.command()
def resume(
    name: Annotated[str, typer.Argument(help="Study name.")],
    db: DbOption = None,
    executor: ExecutorOption = None,
    workers: WorkersOption = 1,
    threads_per_worker: ThreadsOption = 1,
    ray_address: RayAddressOption = None,
    heartbeat_timeout: HeartbeatOption = 60.0,
    max_seconds: MaxSecondsOption = None,
    estimators: Annotated[str | None, typer.Option("--estimators", help="Switch the study's sensitivity "
                                                   "estimators (comma-separated) without recalibrating: the new "
                                                   "ones are scored, the spec stored updated.")] = None,
    estimator_option: EstimatorOptionOption = None,
) -> None:
    """Finish a study that was interrupted: expired leases go back to the queue, nothing runs twice.

    A candidate that was being evaluated when the coordinator died is retried once its lease expires
    (--heartbeat-timeout seconds after the last heartbeat). Executor options may differ from launch.
    --estimators and --estimator-option change the study's estimators: the inventory, activation ranges
    and target tables already stored are reused, and the solver proposes again from the new scores.

    Example:

        bitsearch resume demo

        bitsearch resume demo --workers 2 --heartbeat-timeout 10

        bitsearch resume demo --estimators kurtosis --estimator-option n_images=2
    """
    runner = _executor(executor, workers, threads_per_worker, ray_address, heartbeat_timeout)
    study = _load(name, db)
    if estimators is not None or estimator_option is not None:
        before = study.spec.estimators
        kept = study.change_estimators(before if estimators is None else _items(estimators) or (),
                                       None if estimator_option is None else tuple(estimator_option))
        _progress(f"estimators: {','.join(before)} -> {','.join(study.spec.estimators)} (options: "
                  f"{' '.join(study.spec.estimator_options) or 'defaults'}); inventory, calibration and target "
                  "tables reused")
        if kept and estimator_option is not None:
            _progress(f"scores already stored for {', '.join(kept)} are kept (computed with the options of then)")
    _run(study, runner, threads_per_worker, max_seconds)


@app.command("list")
def list_studies(db: DbOption = None) -> None:
    """List the studies in the database.

    Example:

        bitsearch list --db sqlite:///runs.db
    """
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "state", "model", "budget", "candidates")
    st = _storage(db, readonly=True)
    for info in st.list_studies():
        counts = st.count_candidates(info.name)
        table.add_row(info.name, str(getattr(info.state, "value", info.state)), str(info.spec.get("model")),
                      ",".join(info.spec.get("budget", [])),
                      " ".join(f"{getattr(k, 'value', k)}={v}" for k, v in counts.items() if v))
    Console().print(table)


@app.command()
def status(name: Annotated[str, typer.Argument(help="Study name.")], db: DbOption = None) -> None:
    """Show a study's spec and its candidates by state.

    Example:

        bitsearch status demo
    """
    study = _load(name, db, readonly=True)
    counts = study.storage.count_candidates(name)
    info = study.storage.get_study(name)
    typer.echo(f"study {name}: {getattr(info.state, 'value', info.state)}")
    if info.reason:
        typer.echo(f"reason: {info.reason}")
    typer.echo(json.dumps(study.spec.to_dict(), indent=2))
    typer.echo("candidates: " + (", ".join(f"{getattr(k, 'value', k)}={v}" for k, v in counts.items()) or "none yet"))
    from storage import CandidateState

    for c in study.storage.list_candidates(name, states=[CandidateState.FAILED, CandidateState.INVALID]):
        typer.echo(f"  candidate {c.id} {c.state.value} at the {c.fidelity} evaluation: {c.reason}")
    typer.echo("evaluations (done/queued): " + ", ".join(f"{f} {d}/{q}" for f, (d, q) in
                                                        study.evaluation_counts().items()))
    from search.validation import stored_validation

    validation = stored_validation(study.cache)
    if validation:
        _print_validation(validation)
    note = study.solver(lambda m: None).describe()  # e.g. where the optuna solver keeps its study
    if note:
        typer.echo(note)


@app.command()
def validate(
    name: Annotated[str, typer.Argument(help="Study name.")],
    single: Annotated[int, typer.Option("--single", min=3, help="Single-layer quantizations to measure.")] = 12,
    mixed: Annotated[int, typer.Option("--mixed", min=3, help="Random mixed configs to measure.")] = 12,
    images: Annotated[int, typer.Option("--images", min=1, help="Held-out images per measurement.")] = 4,
    threads: ThreadsOption = 1,
    db: DbOption = None,
) -> None:
    """Check the study's sensitivity scores against real degradation, and store the result.

    Measures single-layer and random mixed configs on held-out prompts and seeds (never used by the
    estimators), quantized with the study's backend, and prints each estimator's Spearman rank
    correlation with the measured quality (image MSE vs full precision) and alignment drop (Kendall's
    tau is stored too). `bitsearch status NAME` shows the stored result.

    Example:

        bitsearch validate demo --single 24 --mixed 24
    """
    from search.executors import pin_threads

    study = _load(name, db)
    pin_threads(threads)
    from search.validation import validate as measure_validation

    _print_validation(measure_validation(study, _progress, n_single=single, n_mixed=mixed, n_images=images))


def _print_validation(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("estimator (metric)", "single: rho quality", "rho alignment", "mixed: rho quality",
                  "rho alignment", "configs", title="sensitivity validation (Spearman rho, held-out prompts/seeds)")

    def rho(r: dict[str, Any], kind: str, metric: str) -> str:
        v = r["correlations"][kind][metric]["spearman"]
        return "n/a" if v is None else f"{v:+.2f}"

    for r in results:
        table.add_row(f"{r['estimator']} ({r['metric']})", rho(r, "single", "quality"), rho(r, "single", "alignment"),
                      rho(r, "mixed", "quality"), rho(r, "mixed", "alignment"),
                      f"{r['counts']['single']} + {r['counts']['mixed']}")
    Console().print(table)
    if any(r["simulated"] for r in results):
        typer.echo("note: some measurements ran simulated layers (fake quantization)")


@app.command()
def pareto(
    name: Annotated[str, typer.Argument(help="Study name.")],
    objectives: Annotated[str | None, typer.Option("--objectives", help="Metrics and costs, comma-separated (see "
                                                   "`bitsearch quantities`); quality = the metric studies rank by. "
                                                   "Default: quality,latency,memory (measured), or quality,wbits "
                                                   "for a study whose runs measured nothing.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    plot: Annotated[str | None, typer.Option("--plot", help="Write a PNG plot of all points and the front.")] = None,
    db: DbOption = None,
) -> None:
    """Print the measured Pareto front of a study (quality vs cost).

    Example:

        bitsearch pareto demo --objectives sqnr_db,wbits --format csv --plot front.png
    """
    from quant.config import ConfigError
    from search.front import default_objectives, objective
    from search.front import pareto as pareto_front

    if plot:
        _check_output(plot, "--plot")
    if fmt not in ("table", "json", "csv"):
        _fail(f"unknown format {fmt!r}; valid: table, json, csv")
    study = _load(name, db, readonly=True)
    points = study.front_points()
    try:
        given = default_objectives(points) if objectives is None else objectives.split(",")
        objs = [objective(o.strip()).name for o in given if o.strip()]
        front = pareto_front(points, objs)
    except ConfigError as e:
        _fail(e)
    if not front and not points:
        _fail(f"study {name!r} has no evaluated candidate yet: nothing to rank (`bitsearch status {name}` "
              "shows its progress)")
    rows = [_front_row(p, objs) for p in front]
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=2))
    elif fmt == "csv":
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["candidate"])
        writer.writeheader()
        writer.writerows(rows)
    else:
        from rich.console import Console
        from rich.table import Table

        from quant.quantities import quantity
        from search.front import MEASURED_COSTS

        def label(key: str) -> str:
            q = quantity(key) if key in objs or key in MEASURED_COSTS or key.endswith("_predicted") else None
            if q is None:
                return key
            shown = f"{q.name.replace('_predicted', ' pred')} {q.unit}".strip()
            return f"{shown} (proxy)" if q.proxy else shown

        header = list(rows[0]) if rows else ["candidate"]
        table = Table(*map(label, header), title=f"Pareto front of {name} ({', '.join(objs)})")
        for r in rows:
            table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()))
        Console(width=max(Console().width, 132)).print(table)
        _print_front_notes(study, rows)
    if plot:
        _plot(study, points, objs, front, plot)
        typer.echo(f"plot written to {plot}")


@app.command()
def targets(
    model: Annotated[str, typer.Option("--model", help="What `inspect --model` takes: a workload ('builtin', a "
                                       "plugin), a pipeline or model directory, or a built-in config (sd15-unet, ...: "
                                       "random weights); the formats are measured on its denoiser.")] = "builtin",
    bits: Annotated[str, typer.Option("--bits", help="Bit pairs to measure, comma-separated.")] =
    "W8A8,W6A8,W4A8,W8A16,W4A16",
    backend: Annotated[str, typer.Option("--backend", help="The target's kernels.")] = "int8",
    threads: ThreadsOption = 1,
) -> None:
    """List the formats this machine's target runs, measured against its fastest float format.

    For each format: how its layers run (the label), one denoiser call's CPU time and the resident MB
    if the whole model ran in it, both relative to the fastest float format (fp32 or bf16, whichever
    runs the model faster here).

    Example:

        bitsearch targets --model builtin --threads 1

        bitsearch targets --model sd15-unet --bits W8A8,W8A16   # an SD1.5-size UNet, random weights
    """
    from rich.console import Console
    from rich.table import Table

    from quant.calibrate import calibrate_activations
    from quant.config import Bits, TimestepGroups
    from quant.errors import BitsearchError
    from quant.targets import describe, formats, measure_tables
    from search.executors import pin_threads
    from workloads.base import load_model

    pin_threads(threads)
    try:
        pairs = [Bits.parse(b) for b in bits.split(",") if b.strip()]
        found = load_model(model, weights=True, num_steps=4)
        denoiser, inputs, workload = found.module, found.inputs, found.workload
        if workload is not None:  # ranges from its sampler's own calls
            run = workload.calibration_run(workload.batch(2, "calibration"))
        else:  # no sampler: its example inputs, the ranges of random weights (their kernels' speed is the same)
            def run(set_step: Callable[[int], None]) -> None:
                set_step(0)
                denoiser(**inputs)
        ranges = calibrate_activations(denoiser, TimestepGroups(workload.num_steps if workload else 1), run)
        tables = measure_tables(denoiser, inputs, pairs, backend, ranges)
        rows = describe(tables, formats(backend, pairs))
    except (BitsearchError, ValueError) as e:
        _fail(e)
    table = Table("format", "bits", "runs as", "ms/call", "x reference", "MB", "x reference",
                  title=f"formats of the {backend} target on this machine, measured on {model} ({threads} thread(s))")
    for r in rows:
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else "-" if v is None else str(v) for v in (
            r["name"], r["bits"], r["label"], r["latency_ms"], r["latency_x"], r["memory_mb"], r["memory_x"])))
    Console().print(table)
    typer.echo(f"reference: {tables.reference_words} ({tables.float_latency_s * 1e3:.3g} ms per call); "
               "x < 1 is faster or smaller than it. Quantized rows: each layer timed inside whole calls beside "
               f"its float forward, plus the rest of the call in {tables.loaded_format} (predictions, as the solver "
               "uses them).")
    for r in rows:
        typer.echo(f"  {r['name']}: {r['description']}")


@app.command()
def quantities() -> None:
    """List every metric and cost: unit, direction, and whether it is a proxy.

    Fronts, objectives and budgets read them from this catalogue; average bits and bit-ops are proxies
    that stand in for what a target really spends.

    Example:

        bitsearch quantities
    """
    from rich.console import Console
    from rich.table import Table

    import quant.cost  # noqa: F401  (declares the costs)
    import workloads.metrics  # noqa: F401  (declares the built-in workloads' metrics)
    from quant.quantities import quantities as catalogue

    table = Table("name", "kind", "unit", "better", "proxy", "what it is", title="metrics and costs")
    for q in catalogue():
        table.add_row(q.name, "cost" if q.cost else "metric", q.unit, "higher" if q.higher_is_better else "lower",
                      "proxy" if q.proxy else "", q.description)
    Console().print(table)


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="Study name.")],
    output: Annotated[str, typer.Option("-o", "--output", help="File to write (.json or .yaml).")],
    candidate: Annotated[int | None, typer.Option("--candidate", help="Candidate id (see `bitsearch pareto`).")] = None,
    best_under: Annotated[str | None, typer.Option("--best-under", help="Best quality with a cost under a limit, in "
                                                   "the units `bitsearch pareto` shows, e.g. wbits=4.5 or size=2.")] = None,
    within_budget: Annotated[bool, typer.Option("--within-budget", help="Best quality among the candidates that "
                                                "meet the study's own budget as measured.")] = False,
    quality: Annotated[str, typer.Option("--quality", help="Metric that decides 'best'.")] = "quality",
    fmt: Annotated[str | None, typer.Option("--format", help=f"{', '.join(FORMATS)} (default: json or "
                                            "yaml from the file suffix).")] = None,
    group: Annotated[int | None, typer.Option("--group", help="Timestep group to export to formats with one "
                                              f"bit-width per layer ({', '.join(PER_LAYER_FORMATS)}).")] = None,
    db: DbOption = None,
) -> None:
    """Export a candidate's bit config: bitsearch's versioned JSON/YAML, MixDQ or ViDiT-Q YAML (weights to
    FILE, activations to FILE_act), a torchao snippet, a ModelOpt quant_cfg, a per-step policy, or a
    diffusers `diffusion_step_policy` block.

    Example:

        bitsearch export demo --within-budget -o best.yaml

        bitsearch export demo --best-under wbits=4.5 -o best.yaml

        bitsearch export demo --candidate 3 --format torchao --group 0 -o quantize_unet.py
    """
    from pathlib import Path

    from quant.config import BitConfig, ConfigError
    from quant.cost import full_precision_costs
    from search.front import best_under as best_point
    from search.front import best_within

    if [candidate is not None, best_under is not None, within_budget].count(True) != 1:
        _fail("give exactly one of --candidate ID, --best-under METRIC=VALUE or --within-budget")
    _check_output(output, "--output")
    study = _load(name, db, readonly=True)
    points = study.front_points()
    if candidate is not None:
        chosen = next((p for p in points if p.candidate_id == candidate), None)
        if chosen is None:
            _fail(f"study {name} has no evaluated candidate {candidate}; see `bitsearch pareto {name}`")
    else:
        try:
            if within_budget:
                reference = full_precision_costs(study.layers(), study.spec.num_steps, study.cache.solved_tables())
                chosen = best_within(points, study.spec.budget, reference, by=quality)
            else:
                chosen = best_point(points, best_under or "", by=quality)
        except ConfigError as e:
            _fail(e)
    config = BitConfig.from_dict(chosen.config)
    kind = fmt or ("yaml" if Path(output).suffix in (".yaml", ".yml") else "json")
    written = _write_export(study, config, kind, output, group)
    typer.echo(f"candidate {chosen.candidate_id} ({chosen.origin}) written to {', '.join(written)}")
    _say_dominance(chosen, points)


def _say_dominance(chosen: FrontPoint, points: list[FrontPoint]) -> None:
    """Whether a uniform format of the same run beats the exported config on quality, latency and memory."""
    from search.front import default_objectives, dominated_by
    from search.origins import UNIFORM

    objs = default_objectives(points)
    better = dominated_by(chosen, [p for p in points if p.origin == UNIFORM], objs)
    if better:
        typer.echo(f"note: dominated on {', '.join(objs)} by uniform candidate(s) "
                   f"{', '.join(str(p.candidate_id) for p in better)} of the same run: prefer one of them")
    else:
        typer.echo(f"not dominated on {', '.join(objs)} by any uniform format of this run")


@app.command()
def delete(
    name: Annotated[str, typer.Argument(help="Study name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Delete even while a live process runs the study.")] = False,
    heartbeat_timeout: HeartbeatOption = 60.0,
    db: DbOption = None,
) -> None:
    """Delete a study and everything recorded for it: candidates, evaluations, sensitivity scores,
    artifacts, and its Optuna study (`bitsearch/NAME`). The target's measured tables go with it.

    A RUNNING study whose runner is alive (a heartbeat within --heartbeat-timeout seconds) is refused
    unless --force: stop that process first. A study whose runner died can be deleted as it is.

    Example:

        bitsearch delete demo --yes
    """
    from datetime import timedelta

    from storage import StudyState
    from storage.models import utcnow

    st = _storage(db)
    info = st.get_study(name)
    if info.state == StudyState.RUNNING and not force:
        evaluating = st.live_leases(name, lease_timeout_s=heartbeat_timeout)
        beat = info.heartbeat_at
        if evaluating or (beat is not None and utcnow() - beat < timedelta(seconds=heartbeat_timeout)):
            _fail(f"study {name} is RUNNING and its runner is alive ({evaluating} candidates being evaluated); "
                  "stop it first, or pass --force")
    if not yes:
        try:
            confirmed = typer.confirm(f"delete study {name} and everything recorded for it?", default=False)
        except typer.Abort:  # no answer: stdin closed or not a terminal
            confirmed = False
        if not confirmed:
            _fail("nothing deleted; answer y, or pass --yes")
    counts = st.count_candidates(name)
    _forget_solver_state(st, name, info.spec)
    st.delete_study(name)  # last: if anything above fails, the study is still there to delete again
    typer.echo(f"deleted study {name} ({sum(counts.values())} candidates)")


def _forget_solver_state(st: Storage, name: str, spec: dict[str, Any]) -> None:
    """The study's solver deletes what it kept of its own in the database (the optuna solver's study)."""
    from contextlib import suppress

    from quant.config import ConfigError
    from search.spec import StudySpec
    from search.study import Study

    with suppress(ConfigError):  # a spec this version cannot read (its solver is gone): nothing to ask it
        Study(name, StudySpec.from_dict(spec), st).solver(lambda m: None).forget()


db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Upgrade a database to this bitsearch's schema (back it up first).

    Example:

        bitsearch db upgrade --db sqlite:///bitsearch.db
    """
    import storage

    storage.upgrade(db or storage.DEFAULT_URL)
    typer.echo("database is at the current schema")


def _storage(db: str | None, *, readonly: bool = False) -> Storage:
    """An existing bitsearch database (never created here: only `launch` makes one); `readonly` for
    commands that only read, which then cannot alter it (see storage/db.py)."""
    from storage import Storage

    return Storage(db, create=False, readonly=readonly)


def _load(name: str, db: str | None, *, readonly: bool = False) -> Study:
    from search.study import Study

    return Study.load(name, db, readonly=readonly)


def _check_output(path: str, option: str) -> None:
    """Fail before any work when `path` cannot be written, instead of after it."""
    from pathlib import Path

    out = Path(path)
    if out.is_dir():
        _fail(f"{option} {path} is a directory; give a file name")
    if not out.parent.is_dir():
        _fail(f"{option} {path}: directory {out.parent} does not exist; create it first")


class _StudyProgress:
    """Rich progress bars of a running study's evaluations per fidelity (polled from the database,
    so evaluations by Ray workers count too), each with its time left, and the study's messages printed
    above them. With a plan (`launch --memory-limit`), each stage's message carries the plan's prediction
    and the bars' time left is the plan's until their own pace is known."""

    def __init__(self, study: Study, plan: Plan | None = None) -> None:
        import threading

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from search.evaluation import CHEAP, FULL

        self.study = study
        self.predicted = {} if plan is None else {s.name: s.seconds for s in plan.stages}
        each = {f: self.predicted.get(f"each {f} evaluation") for f in (CHEAP, FULL)}
        # a pace measured over the whole run: an evaluation of a big model takes minutes, rich's default is 30 s
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), _TimeLeft(each), console=Console(stderr=True), transient=False,
                             speed_estimate_period=24 * 3600)
        self.tasks = {f: self.bars.add_task(f"{f} evaluations", total=None, visible=False, fidelity=f)
                      for f in (CHEAP, FULL)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="study-progress", daemon=True)

    def message(self, text: str) -> None:
        seconds = self.predicted.get(_plan_stage(text))
        note = "" if seconds is None else f" (plan: about {_duration(seconds)})"
        self.bars.console.print(f"· {text}{note}", highlight=False)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self.refresh()

    def refresh(self) -> None:
        try:
            counts = self.study.evaluation_counts()
        except Exception:  # the database is busy: the next poll will do
            return
        for fidelity, (done, total) in counts.items():
            self.bars.update(self.tasks[fidelity], completed=done, total=total, visible=total > 0)

    def __enter__(self) -> _StudyProgress:
        self.bars.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.refresh()
        self.bars.stop()


def _run(study: Study, executor: Executor, threads: int, max_seconds: float | None, plan: Plan | None = None) -> None:
    from search.executors import pin_threads

    pin_threads(threads)  # the coordinator's own stages too: oversubscribed threads ran 50x slower here
    from quant.config import ConfigError

    try:
        with _StudyProgress(study, plan) as bars:
            study.run(progress=bars.message, max_seconds=max_seconds, executor=executor)
    except ConfigError as e:  # e.g. a latency budget below what the target's measured tables allow
        _fail(e)
    if study.storage.get_study(study.name).state.value == "COMPLETE":
        typer.echo(f"study {study.name} finished; see `bitsearch pareto {study.name}`")
    else:
        typer.echo(f"study {study.name} stopped with candidates left; continue with `bitsearch resume {study.name}`")


def _plan_stage(message: str) -> str:
    """The plan's name of the stage a study's message starts ("calibration: ...", "sensitivity: gradient
    over ...", "target tables: ...")."""
    if message.startswith("target tables:"):
        return "latency table"
    head = message.split(" over ")[0]
    return head if head.startswith("sensitivity:") else head.split(":")[0]


class _TimeLeft(ProgressColumn):
    """A bar's time left: from its own pace once an item is done, before that from the plan's time of
    one item (`each`, per fidelity), if a plan was made."""

    def __init__(self, each: dict[str, float | None]) -> None:
        super().__init__()
        self.each = each

    def render(self, task: Task) -> Text:
        from datetime import timedelta

        left = task.time_remaining if task.completed else None
        each = self.each.get(str(task.fields.get("fidelity")))
        if left is None and each is not None and task.total is not None:
            left = each * (task.total - task.completed)
        return Text("left " + ("-:--:--" if left is None else str(timedelta(seconds=int(left)))), style="progress.remaining")


# run labels as a front's `formats` column shows them (the note under the table spells them out)
_SHORT_LABELS = {"int8-kernel": "i8", "weight-only-kernel": "wo", "dequantize-float": "deq", "float": "fp",
                 "simulated": "sim"}


def _front_row(point: FrontPoint, objs: list[str]) -> dict[str, object]:
    """A front point as the table, JSON and CSV show it: the objectives, what the user pays measured
    beside its prediction (and the error, flagged past PREDICTION_TOLERANCE), and how the layers ran."""
    from search.front import MEASURED_COSTS, PREDICTION_TOLERANCE, prediction_error

    row: dict[str, object] = {"candidate": point.candidate_id, "origin": point.origin,
                              **{o: point.value(o) for o in objs}}
    for cost in MEASURED_COSTS:
        if cost not in objs and cost in point.costs:
            row[cost] = point.costs[cost]
        if f"{cost}_predicted" in point.costs:
            row[f"{cost}_predicted"] = point.costs[f"{cost}_predicted"]
    error = prediction_error(point)
    if error is not None:
        row["latency_error"] = f"{100 * error:+.0f}%{' !' if abs(error) > PREDICTION_TOLERANCE else ''}"
    row["formats"] = " ".join(f"{_SHORT_LABELS.get(label, label)} {100 * share:.0f}%"
                              for label, share in point.formats.items())
    row["measured"] = point.measured
    return row


def _print_front_notes(study: Study, rows: list[dict[str, object]]) -> None:
    tables = study.cache.solved_tables()
    if tables is not None:
        typer.echo(f"latency: CPU ms per denoiser call at batch 1, measured; memory: resident MB, measured. The "
                   f"reference, {tables.reference_words}: {tables.float_latency_s * 1e3:.3g} ms, "
                   f"{tables.float_bytes / 1e6:.3g} MB (what relative budgets like memory=0.5x refer to).")
    if rows and "formats" in rows[0]:
        typer.echo("formats: share of layer slots per run label (i8 int8-kernel, wo weight-only-kernel, deq "
                   "dequantize-float, fp float, sim simulated)")
    if any(str(r.get("latency_error", "")).endswith("!") for r in rows):
        typer.echo("!: measured latency more than 15% from its prediction (the tables time layers alone)")
    if any(not r["measured"] for r in rows):
        typer.echo("note: rows with measured=False ran simulated layers: numerics simulated, latency estimated")


def _plot(study: Study, points: list[FrontPoint], objs: list[str], front: list[FrontPoint], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality, cost = objs[0], objs[1]
    pts = [p for p in points if p.has(quality) and p.has(cost)]  # e.g. alignment: promoted candidates only
    fig, ax = plt.subplots(figsize=(6, 4))
    for origin in sorted({p.origin for p in pts}):
        sel = [p for p in pts if p.origin == origin]
        ax.scatter([p.value(cost) for p in sel], [p.value(quality) for p in sel], label=origin, alpha=0.7)
    ax.plot([p.value(cost) for p in front], [p.value(quality) for p in front], "k--", lw=1, label="Pareto front")
    from quant.quantities import quantity

    ax.set_xlabel(quantity(cost).label)
    ax.set_ylabel(quantity(quality).label)
    ax.set_title(f"{study.name}: measured on {study.spec.backend} kernels")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- exports and imports ---------------------------------------------------------------------------


def _write_export(study: Study, config: BitConfig, kind: str, output: str, group: int | None) -> list[str]:
    """Write `config` in format `kind`; the paths written (mixdq writes two files)."""

    from quant.config import ConfigError
    from search.exports import export, format_options

    if kind not in FORMATS:
        _fail(f"unknown format {kind!r}; valid: {', '.join(FORMATS)}")
    options: dict[str, Any] = {} if group is None or kind not in PER_LAYER_FORMATS else {"group": group}
    # formats that list the model's layers by name need its inventory; the others keep the config's rules
    layers = study.layers(progress=_progress) if "layers" in format_options(kind) else None
    try:
        result = export(config, kind, layers=layers, **options)
    except ConfigError as e:
        _fail(e)
    return _write_result(result, kind, output)


def _write_result(result: str | dict[str, Any], kind: str, output: str) -> list[str]:
    """Write an exporter's result; the paths written (mixdq and vidit-q write FILE and FILE_act)."""
    from pathlib import Path

    out = Path(output)
    if isinstance(result, dict) and set(result) == TWO_FILES:
        act = out.with_name(f"{out.stem}_act{out.suffix or '.yaml'}")
        out.write_text(result["weights"])
        act.write_text(result["activations"])
        return [str(out), str(act)]
    if isinstance(result, dict):
        import yaml

        yaml_out = out.suffix in (".yaml", ".yml")
        out.write_text(yaml.safe_dump(result, sort_keys=False) if yaml_out else json.dumps(result, indent=2))
    else:
        out.write_text(result)
    return [str(out)]


@app.command("import")
def import_(
    name: Annotated[str, typer.Argument(help="Study name.")],
    files: Annotated[list[str], typer.Argument(help="Config files to import (MixDQ: weights files).")],
    fmt: Annotated[str, typer.Option("--format", help=f"{', '.join(IMPORT_FORMATS)}.")] = "json",
    activations: Annotated[str | None, typer.Option("--activations", help="MixDQ or ViDiT-Q activations file.")] = None,
    protected: Annotated[str | None, typer.Option(
        "--protected", help="MixDQ layers in the weights file but not the activations file: weights-only "
        "(W{x}A16, what MixDQ's released code runs; the default) or w16a16.")] = None,
    db: DbOption = None,
) -> None:
    """Import published configs as candidates of a study (origin `import`), to be evaluated on its model.

    Configs are converted to the study's timestep groups and checked against its layers; importing
    the same config twice adds nothing. Run `bitsearch resume NAME` to evaluate them.

    Example:

        bitsearch import demo mixdq_w.yaml --format mixdq --activations mixdq_a.yaml
    """
    from quant.errors import BitsearchError
    from search.exports.importing import import_candidates

    try:
        added = import_candidates(_storage(db), name, files, fmt, activations, protected)
    except (BitsearchError, OSError) as e:
        _fail(e)
    for (cid, created), f in zip(added, files, strict=True):
        typer.echo(f"{f}: candidate {cid} " + ("added" if created else "already in the study"))


@app.command()
def convert(
    file: Annotated[str, typer.Argument(help="Config file to read (MixDQ, ViDiT-Q: the weights file).")],
    from_fmt: Annotated[str, typer.Option("--from", help=f"Its format: {', '.join(IMPORT_FORMATS)}.")],
    activations: Annotated[str | None, typer.Option("--activations", help="MixDQ or ViDiT-Q activations file.")] = None,
    protected: Annotated[str | None, typer.Option(
        "--protected", help="MixDQ layers in the weights file but not the activations file: weights-only "
        "(W{x}A16, what MixDQ's released code runs; the default) or w16a16.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Check names against this model's layers and weight the mean bits by their "
        "parameters: what `inspect --model` takes (directories and built-in configs built on the meta device).")] = None,
    num_steps: Annotated[int | None, typer.Option("--num-steps", min=1, help="Sampler steps for formats without "
                                                  "any (mixdq: default 1; step-policy: rebuild its spans).")] = None,
    to_fmt: Annotated[str | None, typer.Option("--to", help="Also write this format (see `export --format`).")] = None,
    output: Annotated[str | None, typer.Option("-o", "--output", help="File to write with --to.")] = None,
    group: Annotated[int | None, typer.Option("--group", help="Timestep group for --to formats with one "
                                              f"bit-width per layer ({', '.join(PER_LAYER_FORMATS)}).")] = None,
) -> None:
    """Read a config in one format, print a summary, and optionally write it in another. Needs no study.

    The summary: layer count, mean weight bits (a proxy: weighted by parameters and steps when --model
    gives the parameter counts, per layer otherwise), and each timestep group with its bits per layer.

    Example:

        bitsearch convert weight_4.08.yaml --from mixdq --model sdxl-unet

        bitsearch convert t20_weight_6_8_mp.yaml --from vidit-q --activations t20_act_6_mp.yaml --to json -o c.json
    """
    from pathlib import Path

    from quant.config import ConfigError
    from search.exports import export, format_options, formats_taking, import_config
    from search.exports._common import group_summary, mean_weight_bits

    if from_fmt not in IMPORT_FORMATS:
        _fail(f"cannot read format {from_fmt!r}; valid: {', '.join(IMPORT_FORMATS)}")
    if to_fmt is not None and to_fmt not in FORMATS:
        _fail(f"unknown --to format {to_fmt!r}; valid: {', '.join(FORMATS)}")
    if (to_fmt is None) != (output is None):
        _fail("give --to FORMAT and -o FILE together")
    for option, given in (("activations", activations), ("protected", protected)):
        if given is not None and option not in format_options(from_fmt, importing=True):
            _fail(f"--{option} goes with --from {' or '.join(formats_taking(option, importing=True))} only")
    params: dict[str, int] | None = None
    if model is not None:
        from quant.layers import inventory
        from workloads.base import load_model

        try:
            found = load_model(model, weights=False)
            params = {x.fqn: x.params for x in inventory(found.module, found.inputs)}
        except (ValueError, RuntimeError) as err:
            _fail(err)
    options: dict[str, Any] = {}
    if activations is not None:
        options["activations"] = Path(activations).read_text()
    if protected is not None:
        options["protected"] = protected
    takes = format_options(from_fmt, importing=True)
    if "groups" in takes:  # a format with no steps of its own (mixdq): one step unless told
        options["num_steps"] = num_steps or 1
    elif "num_steps" in takes and num_steps is not None:  # a step policy rebuilds its spans
        options["num_steps"] = num_steps
    try:
        config = import_config(Path(file).read_text(), from_fmt, layers=list(params) if params else None, **options)
        names = list(params) if params else [k for k in config.rules if k != "_default" and not k.startswith("re:")]
        if params:
            mean, how = mean_weight_bits(config, params), f"weighted by the parameters of {model}"
        else:
            mean, how = mean_weight_bits(config, dict.fromkeys(names, 1)), "per layer, unweighted (no --model)"
        summary = group_summary(config, names)
    except (ConfigError, OSError) as e:
        _fail(e)
    typer.echo(f"{file} ({from_fmt}): {len(names)} layers, {config.groups.num_steps} steps, {len(config.groups)} "
               "timestep group(s)")
    typer.echo(f"mean weight bits (proxy, {how}): {mean:.3f}")
    for g in summary:
        lo, hi = g["steps"]
        typer.echo(f"  group {g['group']} steps {lo}-{hi}: " + ", ".join(f"{b} x{n}" for b, n in g["bits"].items()))
    if to_fmt is not None and output is not None:
        out_opts: dict[str, Any] = {} if group is None or to_fmt not in PER_LAYER_FORMATS else {"group": group}
        try:
            result = export(config, to_fmt, layers=(list(params) if params else names)
                            if "layers" in format_options(to_fmt) else None, **out_opts)
        except ConfigError as e:
            _fail(e)
        typer.echo(f"written to {', '.join(_write_result(result, to_fmt, output))}")


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    db: DbOption = None,
    open_reads: Annotated[bool, typer.Option("--open-reads", help="Serve reads without the token.")] = False,
    model_root: Annotated[list[str] | None, typer.Option("--model-root", help="Directory whose model "
                                                          "directories studies may use (repeatable).")] = None,
    executor: ExecutorOption = None,
    workers: WorkersOption = 1,
    threads_per_worker: ThreadsOption = 1,
    ray_address: RayAddressOption = None,
    heartbeat_timeout: HeartbeatOption = 60.0,
) -> None:
    """Serve the HTTP API (OpenAPI at /docs). Writes need `Authorization: Bearer $BITSEARCH_TOKEN`.

    Without BITSEARCH_TOKEN the server starts only with --open-reads, and then refuses every write.
    Studies created through the API run in the background on the executor the options choose.

    Example:

        BITSEARCH_TOKEN=$(openssl rand -hex 16) bitsearch serve --port 8000 --model-root ~/models

        BITSEARCH_TOKEN=... bitsearch serve --workers 2 --threads-per-worker 1   # studies on 2 Ray workers
    """
    import os

    token = os.environ.get("BITSEARCH_TOKEN") or None
    if token is None and not open_reads:
        _fail("set BITSEARCH_TOKEN (or pass --open-reads for a read-only server)")
    roots = model_root or []
    for root in roots:
        if not os.path.isdir(root):
            _fail(f"--model-root {root}: not a directory")
    import uvicorn

    from quant.errors import BitsearchError
    from search.api import create_app

    _executor(executor, workers, threads_per_worker, ray_address, heartbeat_timeout)  # bad options fail now
    try:
        api = create_app(db, token, open_reads=open_reads, model_roots=roots,
                         executor=lambda: _executor(executor, workers, threads_per_worker, ray_address,
                                                    heartbeat_timeout), lease_timeout_s=heartbeat_timeout)
    except BitsearchError as e:  # e.g. a token that is too short, a --db that cannot be opened
        _fail(e)
    if token is None:
        typer.echo("note: no BITSEARCH_TOKEN: read-only server, every write is refused", err=True)
    uvicorn.run(api, host=host, port=port)


if __name__ == "__main__":  # at the end: `python -m search.cli` needs every command registered first
    app()
