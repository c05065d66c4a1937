"""The `diffusers` workload on tiny random SD / SDXL / PixArt-alpha pipelines saved to disk.

The pipelines come from `conftest.tiny_pipelines` (built once per session from configs, no hub).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from quant.apply import apply
from quant.calibrate import calibrate_activations
from quant.config import BitConfig, TimestepGroups
from quant.errors import UnknownNameError
from workloads.base import SPLIT_SEED_STRIDE, Batch, WorkloadError, load_workload
from workloads.diffusers_workload import DEFAULT_PROMPTS, DiffusersWorkload

STEPS = 4
KINDS = ["sd", "sd2", "pixart", "pixart_sigma", "sdxl"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workloads(tiny_pipelines: dict[str, Path]) -> dict[str, DiffusersWorkload]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {k: DiffusersWorkload(p, num_steps=STEPS) for k, p in tiny_pipelines.items()}
    finally:
        torch.set_num_threads(n)


def test_loads_each_pipeline_kind_with_its_denoiser(workloads):
    expected = {
        "sd": ("StableDiffusionPipeline", "UNet2DConditionModel"),
        "sd2": ("StableDiffusionPipeline", "UNet2DConditionModel"),
        "pixart": ("PixArtAlphaPipeline", "PixArtTransformer2DModel"),
        "pixart_sigma": ("PixArtSigmaPipeline", "PixArtTransformer2DModel"),
        "sdxl": ("StableDiffusionXLPipeline", "UNet2DConditionModel"),
    }
    for kind, (pipe_cls, denoiser_cls) in expected.items():
        wl = workloads[kind]
        assert type(wl.pipe).__name__ == pipe_cls
        assert type(wl.denoiser).__name__ == denoiser_cls
        assert wl.denoiser is (wl.pipe.transformer if kind.startswith("pixart") else wl.pipe.unet)
        assert wl.prompts == DEFAULT_PROMPTS


def test_registered_and_reachable_by_path(tiny_pipelines):
    wl = load_workload(str(tiny_pipelines["sd"]), num_steps=2)
    assert isinstance(wl, DiffusersWorkload) and wl.num_steps == 2
    with pytest.raises(UnknownNameError, match="has no option 'num_step'; valid options: prompts, num_steps"):
        load_workload(str(tiny_pipelines["sd"]), num_step=2)
    with pytest.raises(UnknownNameError, match="neither a workload name .*diffusers.* nor an existing path"):
        load_workload("no/such/pipeline")


@pytest.mark.parametrize("kind", KINDS)
def test_generation_is_deterministic_per_seed_and_steps_are_hooked(workloads, kind):
    wl = workloads[kind]
    batch = wl.batch(2)
    steps: list[int] = []
    first = wl.generate(batch, on_step=steps.append, record_steps=True)
    assert steps == list(range(STEPS))
    assert first.images.shape == (2, 3, 16, 16)
    assert float(first.images.min()) >= 0.0 and float(first.images.max()) <= 1.0
    assert len(first.step_outputs) == STEPS
    assert all(torch.isfinite(o).all() for o in first.step_outputs)
    again = wl.generate(batch)
    assert torch.equal(first.images, again.images)
    assert again.step_outputs == []  # nothing recorded unless asked
    # Hooks are removed after each generation.
    assert not wl.denoiser._forward_pre_hooks and not wl.denoiser._forward_hooks


def test_image_depends_only_on_its_own_seed_and_prompt(workloads):
    wl = workloads["sd"]
    b = wl.batch(2)
    a = wl.generate(b)
    swapped_partner = wl.generate(Batch((b.prompts[0], "a completely different prompt"), (b.seeds[0], 12345)))
    assert torch.equal(a.images[0], swapped_partner.images[0])
    alone = wl.generate(Batch(b.prompts[:1], b.seeds[:1]))  # batch size changes BLAS blocking only
    torch.testing.assert_close(alone.images[0], a.images[0], atol=1e-5, rtol=0)
    new_seed = wl.generate(Batch(b.prompts[:1], (b.seeds[0] + 1,)))
    assert not torch.allclose(new_seed.images[0], a.images[0])


def test_splits_use_disjoint_seeds_and_cycle_prompts(workloads):
    wl = workloads["sd"]
    ev, cal = wl.batch(30), wl.batch(30, split="calibration")
    assert not set(ev.seeds) & set(cal.seeds)
    assert ev.prompts[: len(DEFAULT_PROMPTS)] == DEFAULT_PROMPTS and ev.prompts[len(DEFAULT_PROMPTS)] == DEFAULT_PROMPTS[0]
    assert wl.batch(3, offset=2).seeds == ev.seeds[2:5]
    with pytest.raises(ValueError, match="unknown split 'train'"):
        wl.batch(2, split="train")
    with pytest.raises(ValueError, match=str(SPLIT_SEED_STRIDE)):
        wl.batch(2, offset=SPLIT_SEED_STRIDE)


def test_prompts_from_a_list_or_a_file(tiny_pipelines, tmp_path):
    file = tmp_path / "prompts.txt"
    file.write_text("a cat\n\n  a dog  \n")
    wl = DiffusersWorkload(tiny_pipelines["sd"], prompts=str(file), num_steps=2, base_seed=7)
    assert wl.prompts == ("a cat", "a dog")
    assert wl.batch(3).prompts == ("a cat", "a dog", "a cat") and wl.batch(3).seeds == (7, 8, 9)
    assert DiffusersWorkload(tiny_pipelines["sd"], prompts=["x"], num_steps=2).prompts == ("x",)
    with pytest.raises(WorkloadError, match="prompt file not found"):
        DiffusersWorkload(tiny_pipelines["sd"], prompts=str(tmp_path / "missing.txt"))


@pytest.mark.parametrize(("kind", "backend"), [
    ("sd", "fake"), ("sd", "int8"), ("sd2", "int8"), ("pixart", "fake"), ("pixart", "int8"), ("pixart_sigma", "int8"),
    ("sdxl", "fake"),  # SDXL's pipeline reads add_embedding.linear_1.in_features of a quantized layer
])
def test_per_group_quantization_changes_images_and_restores(workloads, kind, backend):
    wl = workloads[kind]
    groups = TimestepGroups(STEPS, (0, 2))
    batch = wl.batch(2)
    reference = wl.generate(batch, record_steps=True)
    ranges = calibrate_activations(wl.denoiser, groups, wl.calibration_run(wl.batch(2, split="calibration")))
    config = BitConfig(groups, {"_default": ["W8A8", "W4A8"]})
    qm = apply(wl.denoiser, config, backend, ranges)
    try:
        quantized = wl.generate(batch, on_step=qm.set_step, record_steps=True)
        executed = qm.executed_labels()
        assert executed and all(set(groups_ran) == {0, 1} for groups_ran in executed.values())
        assert len(executed) == len(qm.layers)  # every quantized layer really ran, in both groups
        expected_label = "simulated" if backend == "fake" else "int8-kernel"
        assert {lbl for ran in executed.values() for lbl in ran.values()} == {expected_label}
    finally:
        qm.restore()
    assert not torch.equal(quantized.images, reference.images)
    assert not torch.equal(quantized.step_outputs[-1], reference.step_outputs[-1])
    restored = wl.generate(batch, record_steps=True)
    assert torch.equal(restored.images, reference.images)
    assert all(torch.equal(a, b) for a, b in zip(restored.step_outputs, reference.step_outputs, strict=True))


def test_multi_group_config_needs_the_step_hook(workloads):
    """Without on_step a 2-group config cannot know its group: the error comes from quant, clearly."""
    wl = workloads["sd"]
    groups = TimestepGroups(STEPS, (0, 2))
    qm = apply(wl.denoiser, BitConfig(groups, {"_default": ["W8A16", "W4A16"]}), "fake")
    try:
        with pytest.raises(RuntimeError, match="set_step"):
            wl.generate(wl.batch(1))
    finally:
        qm.restore()
    assert not wl.denoiser._forward_pre_hooks  # removed even though generation failed


def test_scheduler_with_extra_denoiser_calls_is_refused_with_the_fix(tiny_pipelines):
    # PNDM (the SD 1.x default) runs extra warm-up calls: 5 calls for 4 steps with skip_prk_steps, 13 without.
    with pytest.raises(WorkloadError, match=r"PNDMScheduler runs 13 denoiser calls for 4 steps.*DDIMScheduler"):
        DiffusersWorkload(tiny_pipelines["sd"], num_steps=STEPS, scheduler="PNDMScheduler")
    wl = DiffusersWorkload(tiny_pipelines["sd"], num_steps=STEPS, scheduler="EulerDiscreteScheduler")
    steps: list[int] = []
    wl.generate(wl.batch(1), on_step=steps.append)
    assert steps == list(range(STEPS))
    with pytest.raises(WorkloadError, match="not a diffusers scheduler class"):
        DiffusersWorkload(tiny_pipelines["sd"], scheduler="NoSuchScheduler")


def test_runtime_guard_when_the_denoiser_is_called_more_than_num_steps(workloads):
    from diffusers import HeunDiscreteScheduler

    wl = workloads["sd"]
    saved = wl.pipe.scheduler
    wl.pipe.scheduler = HeunDiscreteScheduler.from_config(saved.config)  # 2 calls a step, past the load check
    steps: list[int] = []
    try:
        with pytest.raises(WorkloadError, match=f"more than num_steps={STEPS} times"):
            wl.generate(wl.batch(1), on_step=steps.append)
    finally:
        wl.pipe.scheduler = saved
    assert steps == list(range(STEPS))
    assert not wl.denoiser._forward_pre_hooks


def _one_line_error(path: Path | str, match: str) -> str:
    with pytest.raises(WorkloadError, match=match) as info:
        DiffusersWorkload(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_paths_give_one_line_errors(tiny_pipelines, tmp_path):
    _one_line_error(tmp_path / "nope", "not a directory; expected a local diffusers pipeline directory")
    (tmp_path / "empty").mkdir()
    _one_line_error(tmp_path / "empty", "no model_index.json; expected a local diffusers pipeline directory")

    # A pipeline whose model_index lists no unet/transformer.
    no_denoiser = tmp_path / "no_denoiser"
    shutil.copytree(tiny_pipelines["sd"], no_denoiser)
    index = json.loads((no_denoiser / "model_index.json").read_text())
    del index["unet"]
    (no_denoiser / "model_index.json").write_text(json.dumps(index))
    _one_line_error(no_denoiser, "pipeline has no denoiser; expected a 'unet' or 'transformer' component")

    # A pipeline whose component weights are broken: diffusers' exception becomes one line.
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipelines["sd"], broken)
    (broken / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    _one_line_error(broken, "could not load the pipeline")

    # Only pickled weights for the denoiser: refused (safetensors only).
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_pipelines["sd"], pickled)
    weights = pickled / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    _one_line_error(pickled, "could not load the pipeline: .*no file named diffusion_pytorch_model.safetensors")


def test_denoiser_without_quantizable_layers_is_refused(tiny_pipelines, tmp_path, monkeypatch):
    import workloads.diffusers_workload as dw

    monkeypatch.setattr(dw, "load_denoiser", lambda *a, **k: None)  # get past the meta-device check
    monkeypatch.setattr(dw, "quantizable_modules", lambda m: {})
    _one_line_error(tiny_pipelines["sd"], "has no nn.Linear or nn.Conv2d layer to quantize")


def test_bad_options(tiny_pipelines):
    with pytest.raises(WorkloadError, match="not a torch floating dtype"):
        DiffusersWorkload(tiny_pipelines["sd"], torch_dtype="int8")
    with pytest.raises(WorkloadError, match="num_steps must be >= 1"):
        DiffusersWorkload(tiny_pipelines["sd"], num_steps=0)
