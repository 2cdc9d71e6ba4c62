"""Fashion-MNIST product photos, read from Debian's ``dataset-fashion-mnist`` package.

70,000 real Zalando product photos (28 x 28 grayscale, 10 classes). The files are IDX ``.gz`` archives under
``/usr/share/datasets/fashion-mnist`` (override with ``$FASHION_MNIST_DIR``).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IMAGE_MAGIC = 2051
_LABEL_MAGIC = 2049


def data_dir() -> Path:
    return Path(os.environ.get("FASHION_MNIST_DIR", DEFAULT_DIR))


def _read_idx(path: Path, magic: int, header_ints: int) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: Fashion-MNIST file not found. Install Debian's package with "
            "`sudo apt-get install dataset-fashion-mnist` (or `make data`), or set $FASHION_MNIST_DIR."
        )
    try:
        raw = gzip.open(path).read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable gzip IDX file ({err})") from err
    header = np.frombuffer(raw, dtype=">i4", count=header_ints)
    if int(header[0]) != magic:
        raise ValueError(f"{path}: bad IDX magic number {int(header[0])}, expected {magic}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 * header_ints)


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(images, labels)``: ``uint8`` arrays of shape ``n x 28 x 28`` and ``n``."""
    if split not in _FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; expected one of {sorted(_FILES)}")
    img_name, lbl_name = _FILES[split]
    images = _read_idx(data_dir() / img_name, _IMAGE_MAGIC, 4).reshape(-1, 28, 28)
    labels = _read_idx(data_dir() / lbl_name, _LABEL_MAGIC, 2)
    if len(images) != len(labels):
        raise ValueError(f"{data_dir()}: {len(images)} images but {len(labels)} labels in split {split!r}")
    return images, labels


def load_all() -> tuple[np.ndarray, np.ndarray]:
    """All 70,000 photos: the 60,000 train images followed by the 10,000 test images."""
    tr_x, tr_y = load_split("train")
    te_x, te_y = load_split("test")
    return np.concatenate([tr_x, te_x]), np.concatenate([tr_y, te_y])
