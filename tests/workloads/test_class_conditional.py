"""Class-conditional models out of the box: a DiTPipeline directory and a bare class-conditional UNet2DModel
directory (both tiny, built from configs) run whole studies from the CLI on the int8 backend, through a
SIGKILL of the coordinator; label accuracy from a user's classifier; typed conditioning in batches."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from quant.quantities import quantity
from search.cli import app
from tests.workloads.class_models import (
    DIT_LABELS,
    NUM_CLASS_EMBEDS,
    build_class_unet,
    build_classifier,
    build_dit_pipeline,
)
from tests.workloads.killed_study import killed_study_runs_to_the_end
from workloads.base import Batch, Generation, WorkloadError, load_workload
from workloads.class_conditional import ClassConditionalWorkload, ClassLabels
from workloads.diffusers_workload import DiffusersWorkload
from workloads.metrics import label_accuracy, label_probabilities


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_class_unet(tmp_path_factory.mktemp("cc") / "unet")


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dit_pipeline(tmp_path_factory.mktemp("dit") / "pipe")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_classifier(tmp_path_factory.mktemp("clf") / "classifier")


# ---- from the CLI, end to end -------------------------------------------------------------------
def test_a_dit_pipeline_runs_a_whole_study_from_the_cli_through_a_kill(dit_dir: Path, tmp_path: Path) -> None:
    # a tiny DiT is mostly what stays in float (embeddings, the 1001-label table): a looser memory budget
    rows = killed_study_runs_to_the_end(str(dit_dir), tmp_path, "--workload-option", "guidance_scale=2.0",
                                        budget="memory=0.85x")
    assert all("psnr_db" in r for r in rows)


def test_a_bare_class_conditional_unet_runs_a_whole_study_with_label_accuracy(
        unet_dir: Path, classifier_dir: Path, tmp_path: Path) -> None:
    rows = killed_study_runs_to_the_end(
        str(unet_dir), tmp_path, "--workload-option", "null_class=4", "--workload-option", "guidance_scale=2",
        "--workload-option", f"classifier={classifier_dir}", objectives="label_accuracy,label_probability,memory")
    assert rows and all(0 <= float(r["label_accuracy"]) <= 1 for r in rows), rows  # type: ignore[arg-type]
    # maximised: on its own, the front is the point the classifier reads best (minimised, the worst)
    from search.study import Study

    study = Study.load("s", str(tmp_path / "study.db"))
    scored = [p for p in study.front_points() if "label_probability" in p.metrics]
    assert len({p.metrics["label_probability"] for p in scored}) > 1, scored  # else the check could not fail
    best = max(scored, key=lambda p: p.metrics["label_probability"])
    assert [p.candidate_id for p in study.pareto(("label_probability",))] == [best.candidate_id]
    assert quantity("label_accuracy").higher_is_better


def test_a_bare_model_dir_without_a_scheduler_is_one_line_at_launch(tmp_path: Path) -> None:
    bare = build_class_unet(tmp_path / "unet", scheduler=None)
    out = CliRunner().invoke(app, ["launch", "--name", "x", "--model", str(bare), "--db", str(tmp_path / "x.db")])
    assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
    assert "no scheduler_config.json here or in scheduler/" in out.output and ".save_pretrained(" in out.output


# ---- the workloads ------------------------------------------------------------------------------
def test_guidance_is_one_batched_call_per_step_and_images_depend_on_their_own_seed(unet_dir: Path) -> None:
    wl = load_workload(str(unet_dir), num_steps=3, null_class=4, guidance_scale=2.0)
    assert isinstance(wl, ClassConditionalWorkload)
    batch = wl.batch(5)
    assert batch.conditions == (0, 1, 2, 3, 0) and batch.labels == batch.conditions  # the null class left out
    seen: list[tuple[int, list[int]]] = []
    handle = wl.denoiser.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((len(args[0]), kwargs["class_labels"].tolist())), with_kwargs=True)
    try:
        steps: list[int] = []
        gen = wl.generate(batch, on_step=steps.append, record_steps=True)
    finally:
        handle.remove()
    assert steps == [0, 1, 2] and len(gen.step_outputs) == 3
    assert seen == [(10, [0, 1, 2, 3, 0, 4, 4, 4, 4, 4])] * 3  # conditional and null halves, one call
    assert gen.images.shape == (5, 1, 8, 8) and 0 <= float(gen.images.min()) <= float(gen.images.max()) <= 1
    alone = wl.generate(Batch(batch.conditions[1:2], batch.seeds[1:2])).images
    torch.testing.assert_close(alone[0], gen.images[1], atol=1e-5, rtol=0)
    other_class = wl.generate(Batch((3,), batch.seeds[1:2])).images
    assert not torch.allclose(other_class, alone)  # the label reaches the model
    unguided = load_workload(str(unet_dir), num_steps=3).generate(batch).images
    assert not torch.allclose(unguided, gen.images)  # no null_class: no guidance


def test_scheduler_in_a_subfolder_options_and_their_errors(unet_dir: Path, classifier_dir: Path, tmp_path: Path) -> None:
    sub = build_class_unet(tmp_path / "sub", scheduler="scheduler")
    wl = load_workload(str(sub), num_steps=2, classes=[3, 1], scheduler="EulerDiscreteScheduler")
    assert isinstance(wl, ClassConditionalWorkload) and wl.batch(3, split="calibration").conditions == (3, 1, 3)
    assert type(wl.scheduler).__name__ == "EulerDiscreteScheduler"
    assert load_workload(str(unet_dir), num_classes=2).batch(3).conditions == (0, 1, 0)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"null_class": NUM_CLASS_EMBEDS}, "null_class=5; the model's embedding holds labels 0 to 4"),
        ({"guidance_scale": 3.0}, "guidance_scale needs null_class"),
        ({"classes": [0, 7]}, r"classes=\[0, 7\]; give a non-empty list of class labels from 0 to 4"),
        ({"num_classes": 9}, "num_classes=9; the model embeds 5 class labels"),
        ({"classes": 3}, r"classes=3; give a list, e.g. classes=\[0,3\]"),
        ({"null_class": 4, "classes": [4]}, "class 4 is the null class"),
        ({"classifier": str(classifier_dir)}, "knows 4 classes but class 4 is sampled"),
        ({"classifier": str(tmp_path)}, "classifier .*config.json missing"),
        ({"scheduler": "HeunDiscreteScheduler"}, "runs 3 denoiser calls for 2 steps"),
    ]
    for options, match in cases:
        with pytest.raises(WorkloadError, match=match) as info:
            ClassConditionalWorkload(unet_dir, num_steps=2, **options)
        assert "\n" not in str(info.value)


def test_unconditional_and_weightless_bare_dirs_say_what_to_do(tmp_path: Path) -> None:
    from diffusers import DDIMScheduler, UNet2DModel

    plain = tmp_path / "plain"
    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                norm_num_groups=8, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2
                ).save_pretrained(plain)
    DDIMScheduler().save_pretrained(plain)
    with pytest.raises(WorkloadError, match="not class-conditional .* save an unconditional model as a DDIMPipeline"):
        load_workload(str(plain))
    weightless = build_class_unet(tmp_path / "weightless")
    (weightless / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WorkloadError, match=r"no diffusion_pytorch_model.safetensors; save the weights"):
        load_workload(str(weightless))


def test_a_transformer2d_dit_dir_loads_as_a_dit_and_guides(dit_dir: Path, tmp_path: Path) -> None:
    """A Transformer2DModel saved with norm_type="ada_norm_zero" (old DiT checkpoints) is a DiT; its
    table holds num_embeds_ada_norm + 1 labels, the last the null class."""
    import json

    bare = tmp_path / "dit"
    shutil.copytree(dit_dir / "transformer", bare)
    config = json.loads((bare / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps({**config, "_class_name": "Transformer2DModel"}))
    shutil.copytree(dit_dir / "scheduler", bare / "scheduler")
    wl = load_workload(str(bare), num_steps=2, num_classes=3, null_class=1000)
    assert type(wl.denoiser).__name__ == "DiTTransformer2DModel" and wl.batch(4).conditions == (0, 1, 2, 0)
    gen = wl.generate(wl.batch(2), record_steps=True)
    assert gen.images.shape == (2, 4, 4, 4) and gen.step_outputs[0].shape == (4, 8, 4, 4)  # 2 x guided, learned sigma


def test_a_dit_pipeline_cycles_its_id2label_and_guides_in_one_call(dit_dir: Path, classifier_dir: Path,
                                                                   tmp_path: Path) -> None:
    wl = load_workload(str(dit_dir), num_steps=2, guidance_scale=3.0)
    assert isinstance(wl, DiffusersWorkload) and wl.batch(4).conditions == (0, 1, 2, 0)
    assert len(DIT_LABELS) == 3
    batches: list[int] = []
    handle = wl.denoiser.register_forward_pre_hook(lambda _m, args: batches.append(len(args[0])))
    try:
        gen = wl.generate(wl.batch(2))
    finally:
        handle.remove()
    assert batches == [4, 4] and gen.images.shape == (2, 3, 8, 8)
    assert load_workload(str(dit_dir), num_steps=2, classes=[2]).batch(2).conditions == (2, 2)
    ddpm = load_workload(str(dit_dir), num_steps=2, scheduler="DDPMScheduler")  # noise in each step
    assert torch.equal(ddpm.generate(ddpm.batch(2)).images, ddpm.generate(ddpm.batch(2)).images)
    small = build_dit_pipeline(tmp_path / "small", num_embeds=10)  # guidance would index class 1000
    with pytest.raises(WorkloadError, match="guides with the null class 1000 but its transformer embeds 11 labels"):
        load_workload(str(small), num_steps=2)
    assert load_workload(str(small), num_steps=2, guidance_scale=1.0).batch(1).labels == (0,)
    with pytest.raises(WorkloadError, match="not a text-to-image pipeline; it takes no prompts"):
        load_workload(str(dit_dir), prompts=["a cat"])
    rgb = build_classifier(tmp_path / "rgb", in_channels=3, num_classes=3)
    scored = load_workload(str(dit_dir), num_steps=2, classifier=str(rgb))
    batch = scored.batch(2)
    metrics = scored.alignment(batch, scored.generate(batch))
    assert set(metrics) == {"label_accuracy", "label_probability"} and metrics["label_accuracy"] in (0.0, 0.5, 1.0)


# ---- label accuracy and typed conditions ---------------------------------------------------------
class _FixedLogits(torch.nn.Module):
    """A classifier stand-in whose logits are given: the metrics' numbers are known in advance."""

    num_classes = 3

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(images)]


def test_label_accuracy_and_probability_are_the_classifier_s_reading_of_the_asked_class() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0], [0.0, 5.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 1])
    assert label_accuracy(logits, labels) == 0.5  # images 0 and 3 read as asked; image 2 is a tie -> class 0
    expected = torch.tensor([2.0, 0.0, 1.0, 5.0]).exp() / logits.exp().sum(1)
    torch.testing.assert_close(label_probabilities(logits, labels), expected.double())
    labels_ = ClassLabels((0, 1, 2, 1), _FixedLogits(logits))  # type: ignore[arg-type]
    batch, gen = Batch((0, 1, 2, 1), (0, 1, 2, 3)), Generation(torch.zeros(4, 1, 8, 8))
    metrics = labels_.alignment(batch, gen)
    assert metrics["label_accuracy"] == 0.5 and metrics["label_probability"] == pytest.approx(float(expected.mean()))
    torch.testing.assert_close(labels_.scores(batch, gen)["label_probability"], expected.double())
    assert ClassLabels((0, 1)).alignment(batch, gen) == {} and ClassLabels((0, 1)).scores(batch, gen) == {}


def test_conditions_are_typed() -> None:
    assert Batch(("a cat", "a dog"), (0, 1)).prompts == ("a cat", "a dog")
    assert Batch((3, 0), (0, 1)).labels == (3, 0) and Batch((None,), (5,)).conditions == (None,)
    with pytest.raises(WorkloadError, match="holds int conditions, not prompts"):
        _ = Batch((3,), (0,)).prompts
    with pytest.raises(WorkloadError, match="holds None, str conditions, not class labels"):
        _ = Batch(("a", None), (0, 1)).labels
    with pytest.raises(ValueError, match="condition True is a bool; expected a prompt"):
        Batch((True,), (0,))
    with pytest.raises(ValueError, match="2 conditions but 1 seeds"):
        Batch((0, 1), (0,))
