"""workloads.classifier: a generic CNN classifier that really learns, saves, loads and resizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workloads.classifier import ImageClassifier, accuracy, load_classifier, save_classifier, train_classifier


def _bars(n: int, seed: int, channels: int = 1, res: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes a CNN must learn from pixels: a horizontal bar, a vertical bar, a diagonal, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    x = 0.25 * torch.rand(n, channels, res, res, generator=g)
    pos = torch.randint(2, res - 2, (n,), generator=g)
    for i in range(n):
        p, k = int(pos[i]), int(labels[i])
        if k == 0:
            x[i, :, p, 2:-2] = 1.0
        elif k == 1:
            x[i, :, 2:-2, p] = 1.0
        else:
            x[i, :, range(res), range(res)] = 1.0
    return x.clamp(0, 1), labels


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained() -> ImageClassifier:
    n = torch.get_num_threads()  # module-scoped: set one thread here, the function-scoped fixture runs later
    torch.set_num_threads(1)
    try:
        x, y = _bars(512, seed=0)
        return train_classifier(x, y, epochs=2, seed=0, width=8, feat_dim=32, batch_size=32, log=None)
    finally:
        torch.set_num_threads(n)


def test_learns_held_out_bars(trained: ImageClassifier) -> None:
    xt, yt = _bars(300, seed=1)
    acc = accuracy(trained, xt, yt)
    assert acc >= 0.95, acc  # chance is 1/3
    assert trained.num_classes == 3 and trained.resolution == 12 and trained.in_channels == 1
    assert trained.features(xt[:5]).shape == (5, 32)


def test_resizes_larger_inputs(trained: ImageClassifier) -> None:
    xt, yt = _bars(100, seed=2, res=24)  # bars twice as long and thick: still the same classes
    assert accuracy(trained, xt, yt) >= 0.9


def test_save_load_round_trip(trained: ImageClassifier, tmp_path: Path) -> None:
    save_classifier(trained, tmp_path, metadata={"heldout_accuracy": 0.99})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_classes"] == 3 and config["heldout_accuracy"] == 0.99
    loaded = load_classifier(tmp_path)
    xt, _ = _bars(20, seed=3)
    with torch.no_grad():
        ref = trained(xt)
        got = loaded(xt)
    assert got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=0.05)  # fp16 on disk
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert not any(p.requires_grad for p in loaded.parameters())


def test_seeded_training_is_deterministic() -> None:
    x, y = _bars(64, seed=0, channels=3, res=8)
    a = train_classifier(x, y, epochs=1, seed=5, width=8, feat_dim=16, batch_size=16, log=None)
    b = train_classifier(x, y, epochs=1, seed=5, width=8, feat_dim=16, batch_size=16, log=None)
    c = train_classifier(x, y, epochs=1, seed=6, width=8, feat_dim=16, batch_size=16, log=None)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.head.weight, c.head.weight)


def test_errors_name_the_fix(tmp_path: Path, trained: ImageClassifier) -> None:
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        load_classifier(tmp_path)
    save_classifier(trained, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors missing"):
        load_classifier(tmp_path)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        trained(torch.zeros(2, 3, 12, 12))
    with pytest.raises(ValueError, match="labels must be"):
        train_classifier(torch.zeros(4, 1, 8, 8), torch.zeros(3), epochs=1, seed=0)
