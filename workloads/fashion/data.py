"""Fashion-MNIST at 16x16 grayscale in [0, 1], read from the IDX files with numpy (no network).

Where the data comes from: Debian's ``dataset-fashion-mnist`` package (``apt-get install
dataset-fashion-mnist``) installs the four gzipped IDX files in ``/usr/share/datasets/fashion-mnist``;
set ``BITSEARCH_FASHION_MNIST`` to another directory holding the same four files (e.g. downloaded
from the Fashion-MNIST repository) to use those. The data is only needed to (re)train or evaluate:
the committed weights in ``workloads/fashion/weights`` are what the project uses.

Splits are Fashion-MNIST's own: 60,000 train / 10,000 test images. Images are resized from 28x28 to
16x16 with antialiased bilinear interpolation, as ``workloads.builtin.data`` does for MNIST.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..builtin.data import _CACHE, _resize

RES = 16
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


@dataclass(frozen=True)
class FashionData:
    """Images in [0, 1], shape (N, 1, 16, 16) float32; labels (N,) int64 in 0..9 (see CLASS_NAMES)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def data_dir() -> Path:
    return Path(os.environ.get("BITSEARCH_FASHION_MNIST", DEFAULT_DIR))


def available() -> bool:
    """Whether all four IDX files are on this machine."""
    return all((data_dir() / f).is_file() for pair in _FILES.values() for f in pair)


def read_idx(path: Path) -> np.ndarray:
    """A gzipped IDX file (unsigned-byte data) as an array of its declared shape."""
    raw = gzip.decompress(path.read_bytes())
    zero, dtype, ndim = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {raw[:4].hex()})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(split: str) -> FashionData:
    """``train`` (60,000) or ``test`` (10,000) at 16x16; cached as .npz after the first call."""
    if split not in _FILES:
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
    cache = _CACHE / f"fashion16_{split}.npz"
    if cache.exists():
        z = np.load(cache)
        return FashionData(z["images"], z["labels"])
    if not available():
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found in {data_dir()}: run `apt-get install dataset-fashion-mnist` "
            "(or set BITSEARCH_FASHION_MNIST to a directory with the four *-ubyte.gz files)"
        )
    img_file, lab_file = _FILES[split]
    pix = read_idx(data_dir() / img_file).astype(np.float32) / 255.0
    labels = read_idx(data_dir() / lab_file).astype(np.int64)
    images = np.clip(_resize(pix, RES), 0.0, 1.0).astype(np.float32)[:, None]
    _CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=images, labels=labels)
    return FashionData(images, labels)
