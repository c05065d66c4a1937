"""Defaults sized to the model: fewer images where one denoiser call costs seconds, not milliseconds.

The spec's image counts (calibration 10, cheap evaluation 20, full evaluation 40, the estimators' 4)
suit models that run a call in milliseconds. On a big denoiser (the size above which the estimators also
replay one batch row at a time, `sensitivity._common.WHOLE_CALLS_BELOW_BYTES`; SD1.5's UNet holds 3.4 GB
of fp32 weights, PixArt-alpha's transformer 2.4 GB, SDXL's 10 GB) they would make a study take many hours
on a CPU. There the counts not given default to BIG_MODEL_SAMPLES and the estimators' `n_images` to
BIG_MODEL_ESTIMATOR_IMAGES: what `bench/scale.py` ran an SD1.5-size study with in 45.5 minutes (at 4
images its gradient estimate alone took 24 minutes; README "Real-size models"). Every one is overridable
(`--estimator-option n_images=4`) and the study's spec stores what was used.

Sampler steps are not resized: they are the sampler the user deploys (and the timestep groups are cut
from them), so a study searches at the steps it is given.

The size is read from the model's architecture built on the meta device (no weights loaded: a second for
SD1.5); built-in workloads and plugins that are not diffusers directories keep the spec's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from search.spec import StudySpec

BIG_MODEL_SAMPLES = {"calibration_samples": 4, "eval_samples": 2, "full_samples": 4}
BIG_MODEL_ESTIMATOR_IMAGES = 2  # the estimators' n_images (default 4): their cost is linear in it


def denoiser_bytes(model: str) -> int | None:
    """The fp32 bytes of the denoiser of a diffusers pipeline or model directory, or of a built-in
    architecture; None for anything else (a workload name, a plugin) or a directory that does not load."""
    from quant.errors import BitsearchError
    from workloads.denoisers import load_denoiser

    try:
        denoiser = load_denoiser(model, device="meta")
    except BitsearchError:  # not a model directory: the workload's own loading reports what is wrong
        return None
    return 4 * sum(p.numel() for p in denoiser.parameters())


def sized_spec(given: Mapping[str, Any]) -> tuple[StudySpec, str]:  # Any: each field's type, or its text
    """The spec of the options `given` (None: not given), image counts not given sized to the model, and
    a line saying which were sized (empty when none were)."""
    from search.spec import estimator_params, parse_options
    from sensitivity._common import WHOLE_CALLS_BELOW_BYTES as BIG_BYTES

    options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    size = denoiser_bytes(str(options.get("model", StudySpec().model)))
    if size is None or size < BIG_BYTES:
        return StudySpec(**options), ""
    sized: dict[str, Any] = {k: n for k, n in BIG_MODEL_SAMPLES.items() if k not in options}
    estimator_options = tuple(options.get("estimator_options") or ())
    estimators = options.get("estimators") or StudySpec().estimators
    takes_images = any("n_images" in (estimator_params(str(e)) or ["n_images"]) for e in estimators)
    if takes_images and "n_images" not in parse_options(estimator_options):
        sized["estimator_options"] = (*estimator_options, f"n_images={BIG_MODEL_ESTIMATOR_IMAGES}")
    if not sized:
        return StudySpec(**options), ""
    shown = ", ".join(f"{k} {n}" for k, n in sized.items() if k != "estimator_options")
    if "estimator_options" in sized:
        shown += f"{', ' if shown else ''}the estimators' n_images {BIG_MODEL_ESTIMATOR_IMAGES}"
    return StudySpec(**{**options, **sized}), (
        f"defaults sized to a {size / 1e9:.2g} GB denoiser (fp32): {shown} (give them to override)")
