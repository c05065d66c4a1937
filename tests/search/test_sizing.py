"""Image counts not given are sized to the model: fewer on a denoiser of SD size (read from its
architecture on the meta device, no weights loaded), the spec's defaults on a small one."""

from __future__ import annotations

from search.api.models import StudyCreate
from search.sizing import BIG_MODEL_ESTIMATOR_IMAGES, BIG_MODEL_SAMPLES, denoiser_bytes, sized_spec
from search.spec import StudySpec


def test_counts_not_given_are_sized_to_an_sd_size_denoiser_and_the_note_names_them() -> None:
    assert denoiser_bytes("sd15-unet") == 4 * 859_520_964  # SD1.5's UNet parameters, fp32
    spec, note = sized_spec({"model": "sd15-unet", "eval_samples": 3, "seed": None})
    assert (spec.calibration_samples, spec.eval_samples, spec.full_samples) == (
        BIG_MODEL_SAMPLES["calibration_samples"], 3, BIG_MODEL_SAMPLES["full_samples"])
    assert "calibration_samples 4" in note and "full_samples 4" in note and "eval_samples" not in note
    assert spec.estimator_options == (f"n_images={BIG_MODEL_ESTIMATOR_IMAGES}",) and "n_images 2" in note
    # an estimator option given is kept, and one that fixes n_images is not overridden
    kept, _ = sized_spec({"model": "sd15-unet", "estimator_options": ("n_images=3", "probes=2")})
    assert kept.estimator_options == ("n_images=3", "probes=2")


def test_a_small_model_and_a_workload_name_keep_the_spec_s_defaults() -> None:
    assert denoiser_bytes("builtin") is None  # a workload name, not a model directory
    assert sized_spec({"model": "builtin"}) == (StudySpec(), "")


def test_the_api_sizes_what_the_body_leaves_out() -> None:
    sized = StudyCreate(name="s", model="sd15-unet", full_samples=8).spec()
    assert (sized.eval_samples, sized.full_samples) == (BIG_MODEL_SAMPLES["eval_samples"], 8)
    assert StudyCreate(name="b").spec() == StudySpec()
