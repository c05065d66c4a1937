"""Real-size models: a whole study on an SD1.5-size pipeline, stage by stage, next to its plan.

Builds (once, cached under ~/.cache/bitsearch/scale/) a Stable Diffusion 1.5-size pipeline with random
weights from configs, no download (`workloads.random_pipelines.build_sd`: the UNet of
`workloads/model_configs/sd15-unet.json`, 860 M parameters, a CLIP ViT-L-size text encoder, a small
VAE, DDIM), then:

1. `bitsearch plan`'s model (`search.plan`): the predicted time and peak resident memory of each stage;
2. the study itself, one stage at a time, each timed (wall and process CPU) and its peak resident
   memory sampled (`quant.resident.PeakResident`): calibration, the estimator, the latency table, the
   integer program, then the candidates measured on the int8 kernels (and any full evaluations);
3. per stage: measured vs predicted (ratio), and the whole study's wall time and peak.

Image counts not given are what `bitsearch launch` sizes for the model (`search.sizing`). With
`--workers N` the evaluations run on N Ray workers; their memory is then the proportional set size
summed over every process (pages the workers share, like the memory-mapped weights, counted once).

Random weights: the images mean nothing and the quality figures are not a result; the time and the
memory are what a user with a trained model of this size pays on this machine. Targets of issue 16:
<= 45 min wall and <= 12 GB peak on 2 cores, each stage within 25% of its plan.

`--arch pixart` does the same for a PixArt-alpha-size transformer (`model_configs/pixart-alpha.json`,
a T5-XXL-width text encoder of 2 layers); `--arch sdxl` for an SDXL-size UNet (`sdxl-unet.json`) runs the
inventory, calibration, latency table and integer program only (scored by the `naive` estimator: no
model run) and prints the plan's estimate of the whole study.

    python bench/scale.py                      # 32x32 latents (256 px), 10 steps, 2 groups, 8 candidates
    python bench/scale.py --arch pixart        # the same, PixArt-alpha-size
    python bench/scale.py --arch sdxl          # SDXL-size: no sensitivity or evaluations
    python bench/scale.py --latent 8 --steps 2 --trials 1 --eval-samples 1   # a smoke run
    python bench/scale.py --latent 8 --steps 2 --trials 2 --workers 2          # Ray workers' memory
    python bench/scale.py --dtype bfloat16     # a bf16 study (where bf16 is the machine's fastest float)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

CACHE = Path(os.environ.get("BITSEARCH_CACHE", Path.home() / ".cache" / "bitsearch")) / "scale"
CONFIGS = Path(__file__).resolve().parents[1] / "workloads" / "model_configs"
GB = 1e9


@dataclass(frozen=True)
class Arch:
    """A real-size denoiser: its shipped config, how a pipeline around it is built, what the bench runs."""

    label: str
    config: str  # a file of workloads/model_configs
    size_key: str  # the config key holding the latent size
    build: Callable[[Path, dict[str, object]], object]
    whole_study: bool  # False: inventory, calibration, latency table and integer program only


def _build_sd15(path: Path, config: dict[str, object]) -> object:
    from workloads.random_pipelines import build_sd

    return build_sd(path, unet_config=config, text_layers=12)


def _build_pixart(path: Path, config: dict[str, object]) -> object:
    from workloads.random_pipelines import build_pixart

    return build_pixart(path, transformer_config=config, text_layers=2)


def _build_sdxl(path: Path, config: dict[str, object]) -> object:
    from workloads.random_pipelines import build_sdxl

    return build_sdxl(path, unet_config=config, text_layers=2)


ARCHS = {
    "sd15": Arch("SD1.5-size UNet", "sd15-unet.json", "sample_size", _build_sd15, True),
    "pixart": Arch("PixArt-alpha-size transformer", "pixart-alpha.json", "sample_size", _build_pixart, True),
    "sdxl": Arch("SDXL-size UNet", "sdxl-unet.json", "sample_size", _build_sdxl, False),
}


def pipeline(arch: str, latent: int) -> Path:
    """The `arch` pipeline directory at `latent` x `latent` latents (built once per size)."""
    path = CACHE / f"{arch}-{latent}-v2"  # v2: built with the sample size kept
    if not (path / "model_index.json").is_file():
        config = json.loads((CONFIGS / ARCHS[arch].config).read_text())
        config[ARCHS[arch].size_key] = latent
        # the shipped SD1.5 config says diffusers 0.6.0: StableDiffusionPipeline then "fixes" any sample_size
        # under 64 back to 64 (512 px), which made the first smoke run time 64x64 latents, 13.6 s a call
        config.pop("_diffusers_version", None)
        t0 = time.perf_counter()
        ARCHS[arch].build(path, config)
        print(f"built {path} in {time.perf_counter() - t0:.0f} s (random weights, safetensors)")
    return path


@contextmanager
def stage(rows: list[dict[str, object]], name: str, processes: bool = False) -> Iterator[None]:
    """Time a stage (wall and this process's CPU) and sample its peak resident memory: this process's RSS,
    or with `processes` the proportional set size summed over this process and all its children (Ray's
    workers and daemons): pages several processes map (the safetensors weights diffusers memory-maps)
    counted once, split between them, so the sum is what the machine holds."""
    from quant.resident import PeakResident

    wall, cpu = time.perf_counter(), time.process_time()
    tree = [0]
    done = threading.Event()

    def sample() -> None:
        import psutil  # installed with ray

        me = psutil.Process()
        while not done.wait(1.0):  # reading every process's smaps takes a while
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with suppress(psutil.Error):
                    total += p.memory_full_info().pss
            tree[0] = max(tree[0], total)

    sampler = threading.Thread(target=sample, daemon=True)
    if processes:
        sampler.start()
    with PeakResident() as peak:
        yield
    done.set()
    rows.append({"stage": name, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                 "peak_gb": (tree[0] if processes else peak.peak_bytes) / GB, "processes": processes})
    print(f"  {name}: {rows[-1]['wall_s']:.0f} s wall, peak {rows[-1]['peak_gb']:.2f} GB"
          f"{' (PSS of all processes)' if processes else ''}", flush=True)


def quiet(_message: str) -> None:
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="sd15")
    ap.add_argument("--latent", type=int, default=32, help="latent height = width (SD1.5: 64 for 512 px)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--groups", type=int, default=2, help="timestep groups")
    ap.add_argument("--trials", type=int, default=8, help="candidates the integer program proposes")
    ap.add_argument("--estimator", default=None,
                    help="default: gradient (the study's default); sdxl: kurtosis, whose plan fits 24 GB")
    ap.add_argument("--calibration-samples", type=int, default=None, help="default: sized to the model")
    ap.add_argument("--eval-samples", type=int, default=None, help="default: sized to the model")
    ap.add_argument("--estimator-images", type=int, default=None, help="default: sized to the model")
    ap.add_argument("--baselines", default="W8A8", help="comma-separated (default: uniform W8A8 only)")
    ap.add_argument("--bits", default=None, help="candidate bit pairs (default: the study's)")
    ap.add_argument("--budget", default="latency=0.8x,memory=0.5x")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="the pipeline's dtype (bfloat16: half the weights' memory, the bf16 model its own reference)")
    ap.add_argument("--db", default=None, help="keep the study in this SQLite file (default: a temporary one)")
    ap.add_argument("--workers", type=int, default=1,
                    help="evaluate on this many Ray workers (each loads its own model; the peak is then summed "
                         "over every process, Ray's own included, and the stage compared by wall time)")
    args = ap.parse_args()
    arch = ARCHS[args.arch]
    estimator = args.estimator or ("gradient" if arch.whole_study else "kurtosis")

    import torch

    from quant.resident import release_freed
    from search.executors import get_executor
    from search.plan import measure_plan, predict
    from search.sizing import sized_spec
    from search.study import Study
    from sensitivity.base import get_estimator

    torch.set_num_threads(1)
    print(f"# python bench/scale.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"torch {torch.__version__}, 1 thread, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    model = str(pipeline(args.arch, args.latent))
    # what `bitsearch launch` makes of these options: counts not given are sized to the model
    spec, sized = sized_spec({
        "model": model, "budget": args.budget, "estimators": (estimator,), "num_steps": args.steps,
        "timestep_groups": args.groups, "trials": args.trials, "calibration_samples": args.calibration_samples,
        "eval_samples": args.eval_samples, "baselines": tuple(args.baselines.split(",")),
        "bits": None if args.bits is None else tuple(args.bits.split(",")),
        "estimator_options": None if args.estimator_images is None else (f"n_images={args.estimator_images}",),
        "workload_options": ("prompts=[\"a photograph of an astronaut riding a horse\"]",
                             *(() if args.dtype == "float32" else (f"torch_dtype={args.dtype}",)))})
    print(sized or "no default sized")
    rows: list[dict[str, object]] = []
    t0 = time.perf_counter()
    with stage(rows, "plan"):
        plan = predict(spec, measure_plan(spec, args.workers), args.workers)
        release_freed()  # the plan's pipeline and what it freed go before the study loads its own
    print(f"    plan measured: {plan.measured}")  # what any later model of the plan can be recomputed from
    for s in plan.stages:  # up front: a run stopped half-way still shows what it was compared with
        print(f"    plan: {s.name}: {s.seconds:.0f} s, {s.peak_bytes / GB:.2f} GB ({s.how})")
    predicted = {s.name: s for s in plan.stages}
    evaluations: list[object] = []
    with tempfile.TemporaryDirectory() as tmp:
        with stage(rows, "load + inventory"):
            study = Study.create("scale", spec, args.db or str(Path(tmp) / "scale.db"))
            layers = study.layers(quiet)
        with stage(rows, "calibration"):
            study.cache.activation_ranges(quiet)
        if arch.whole_study:
            with stage(rows, f"sensitivity: {estimator}"):
                scores = study.cache.scores(layers, quiet)
        else:  # no model run: what the integer program costs, not what its answer is worth
            scores = [get_estimator("naive").estimate(study.workload, layers, list(spec.bits), spec.groups)]
        with stage(rows, "latency table"):
            study.cache.tables(quiet)
        with stage(rows, "integer program" if arch.whole_study else "integer program (naive scores)"):
            study.problem(layers, scores, quiet)
        if arch.whole_study:
            solved: list[tuple[float, float]] = []

            def solver_time(message: str) -> None:  # the integer program's sweep runs inside the study's run
                if message.startswith(f"{spec.solver}:"):
                    solved.append((time.perf_counter(), time.process_time()))
                    print(f"    {message}")

            start = time.perf_counter(), time.process_time()
            with stage(rows, "all evaluations", processes=args.workers > 1):
                study.run(progress=solver_time, executor=get_executor("ray", workers=args.workers, threads_per_worker=1,
                                                                num_cpus=args.workers) if args.workers > 1 else None)
            evaluations = list(study.storage.list_evaluations("scale"))
            if solved:  # the solver's sweep is not in the plan's evaluations: its own row, out of theirs
                wall, cpu = solved[0][0] - start[0], solved[0][1] - start[1]
                sweep = {**rows[-1], "stage": f"{spec.solver}: sweep", "wall_s": wall, "cpu_s": cpu}
                rows[-1] = {**rows[-1], "wall_s": float(rows[-1]["wall_s"]) - wall,  # type: ignore[arg-type]
                            "cpu_s": float(rows[-1]["cpu_s"]) - cpu}  # type: ignore[arg-type]
                rows.insert(-1, sweep)
        study.storage.close()
    total = time.perf_counter() - t0

    def ratio(name: str, key: Callable[[dict[str, object]], float], of: Callable[[object], float]) -> str:
        p = predicted.get(name)
        row = next(r for r in rows if r["stage"] == name)
        return "-" if p is None or not of(p) else f"{key(row) / of(p):.2f}"

    def seconds(row: dict[str, object]) -> float:  # CPU of this process; wall where Ray workers did the work
        return float(row["wall_s"] if row["processes"] else row["cpu_s"])

    print(f"\n{arch.label} ({sum(x.params for x in layers) / 1e6:.0f} M parameters in {len(layers)} layers, {args.dtype}), "
          f"{args.latent}x{args.latent} latents, {args.steps} steps, {args.groups} groups, {estimator}, "
          f"{len(evaluations)} evaluations")
    print(f"{'stage':<26}{'wall s':>8}{'cpu s':>8}{'pred s':>8}{'x pred':>8}{'peak GB':>9}{'pred GB':>9}{'x pred':>8}")
    for r in rows:
        p = predicted.get(str(r["stage"]))
        print(f"{r['stage']!s:<26}{r['wall_s']:>8.0f}{r['cpu_s']:>8.0f}"
              f"{p.seconds if p else float('nan'):>8.0f}{ratio(str(r['stage']), seconds, lambda s: s.seconds):>8}"
              f"{r['peak_gb']:>9.2f}{p.peak_bytes / GB if p else float('nan'):>9.2f}"
              f"{ratio(str(r['stage']), lambda x: float(x['peak_gb']) * GB, lambda s: s.peak_bytes):>8}")
    peak = max(float(r["peak_gb"]) for r in rows)
    ran = "whole study" if arch.whole_study else "stages above"
    print(f"{ran}: {total / 60:.1f} min wall (target <= 45), peak {peak:.2f} GB resident (target <= 12); "
          f"plan of the whole study: {plan.total_seconds / 60:.1f} min CPU, peak {plan.peak.peak_bytes / GB:.2f} GB "
          f"({plan.peak.name})")


if __name__ == "__main__":
    main()
