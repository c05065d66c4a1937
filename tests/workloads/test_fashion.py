"""The shipped Fashion-MNIST class-conditional UNet and its classifier (workloads/fashion): fast checks."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch

from workloads.classifier import ImageClassifier, accuracy, load_classifier
from workloads.fashion import data
from workloads.fashion.evaluate import label_accuracy, load_unet
from workloads.fashion.train import NULL_CLASS, WEIGHTS_DIR

if TYPE_CHECKING:
    from diffusers.models import UNet2DModel

pytestmark = pytest.mark.usefixtures("one_thread")
# The weights are committed; missing ones are a skip naming the command that rebuilds them.
needs_weights = pytest.mark.skipif(not (WEIGHTS_DIR / "unet" / "config.json").exists(),
                                   reason=f"weights missing from {WEIGHTS_DIR}: run `python -m workloads.fashion.train`")
# Measured with the shipped weights, 20 samples, 10 steps, guidance 2: 0.90 on these seeds (0.95-1.0 on
# five other seed sets); 84% on 200 samples at 20 steps (docs/fashion.md). Chance is 0.10; 0.60 leaves
# ~3 binomial standard deviations of margin.
THRESHOLD = 0.6


@needs_weights
def test_committed_weights_fit_in_10_mb() -> None:
    files = [p for p in WEIGHTS_DIR.rglob("*") if p.is_file()]
    names = {p.relative_to(WEIGHTS_DIR).as_posix() for p in files}
    assert {"unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/scheduler_config.json",
            "classifier/config.json", "classifier/model.safetensors"} <= names
    assert sum(p.stat().st_size for p in files) <= 10 * 2**20


@pytest.fixture(scope="module")
def shipped() -> tuple[UNet2DModel, dict[str, Any]]:
    return load_unet(WEIGHTS_DIR / "unet")  # loaded once: the first diffusers import is most of the cost


@needs_weights
def test_unet_loads_as_float32_class_conditional(shipped: tuple[UNet2DModel, dict[str, Any]]) -> None:
    unet, sched = shipped
    assert type(unet).__name__ == "UNet2DModel"
    assert all(p.dtype == torch.float32 for p in unet.parameters())
    assert unet.config["num_class_embeds"] == NULL_CLASS + 1 and unet.class_embedding.num_embeddings == 11
    assert unet.config["sample_size"] == 16 and unet.config["in_channels"] == 1
    assert 1e6 <= sum(p.numel() for p in unet.parameters()) <= 2e6
    saved = json.loads((WEIGHTS_DIR / "unet" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "DDIMScheduler" and sched["beta_schedule"] == "squaredcos_cap_v2"


@pytest.fixture(scope="module")
def classifier() -> ImageClassifier:
    return load_classifier(WEIGHTS_DIR / "classifier")


@needs_weights
def test_guided_samples_are_the_asked_class(shipped: tuple[UNet2DModel, dict[str, Any]],
                                            classifier: ImageClassifier) -> None:
    unet, sched = shipped
    acc, _, images = label_accuracy(unet, sched, classifier, per_class=2, num_steps=10, guidance_scale=2.0, base=7)
    assert images.shape == (20, 1, 16, 16) and images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.2  # garments on a black background, not a flat image
    assert acc >= THRESHOLD, acc  # chance is 10%


@needs_weights
def test_classifier_on_real_test_images(classifier: ImageClassifier) -> None:
    assert classifier.num_classes == 10 and classifier.resolution == 16
    recorded = json.loads((WEIGHTS_DIR / "classifier" / "config.json").read_text())["heldout_accuracy"]
    assert recorded >= 0.85
    if not data.available():
        pytest.skip("Fashion-MNIST not installed: `apt-get install dataset-fashion-mnist`")
    images = data.read_idx(data.data_dir() / "t10k-images-idx3-ubyte.gz")[:500]
    labels = data.read_idx(data.data_dir() / "t10k-labels-idx1-ubyte.gz")[:500]
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]  # 28x28: the classifier resizes
    assert accuracy(classifier, x, torch.from_numpy(labels.astype(np.int64))) >= recorded - 0.05


def test_read_idx(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    (tmp_path / "x.gz").write_bytes(gzip.compress(header + arr.tobytes()))
    assert np.array_equal(data.read_idx(tmp_path / "x.gz"), arr)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\0" * 4))
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        data.read_idx(tmp_path / "bad.gz")


def test_shared_training_pieces() -> None:
    """The DDPM loss and EMA loop that the built-in and the Fashion-MNIST training share."""
    from workloads.builtin.train import epsilon_loss, train_with_ema, warmup_cosine

    abar = torch.linspace(0.99, 0.01, 100)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.zeros(8, 1, 4, 4)  # with x0 = 0, xt / sqrt(1 - abar_t) is exactly the noise
    assert epsilon_loss(lambda xt, t: xt / (1 - abar[t]).sqrt().view(-1, 1, 1, 1), x0, abar, gen) < 1e-10
    assert epsilon_loss(lambda xt, t: torch.zeros_like(xt), x0, abar, gen) > 0.5  # ~E[noise^2] = 1

    assert warmup_cosine(0, 1000, 1.0) == pytest.approx(0.01) and warmup_cosine(99, 1000, 1.0) == pytest.approx(0.978, abs=1e-3)
    assert warmup_cosine(999, 1000, 1.0) == pytest.approx(0.1, abs=1e-3)  # decays to 10%

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(64, 3, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    seen: list[int] = []
    (ema,) = train_with_ema([model], lambda step: torch.nn.functional.mse_loss(model(x), y), steps=300, lr=0.05,
                            ema=0.9, ckpt_every=100, checkpoint=lambda step, emas: seen.append(step))
    assert seen == [100, 200]
    assert isinstance(ema, torch.nn.Linear) and ema is not model and not ema.weight.requires_grad
    assert torch.allclose(ema.weight, torch.tensor([[1.0, -2.0, 0.5]]), atol=0.05)
