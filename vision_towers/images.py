"""uint8 product photos -> normalised float tower input B x C x H x W."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Per-pixel statistics of the 60,000 Fashion-MNIST training images, scaled to [0, 1]
# (checked against the data in tests/vision_towers/test_images.py).
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530


def prepare_images(images_uint8: torch.Tensor | np.ndarray, in_chans: int, img_size: int) -> torch.Tensor:
    """Scales uint8 photos to [0, 1], normalises with Fashion-MNIST mean/std, resizes and matches channels.

    Args:
        images_uint8: B x H x W (grayscale) or B x C x H x W, dtype uint8.
        in_chans: channels the tower expects; grayscale input is repeated when it is 3.
        img_size: output side; bilinear interpolation when it differs from the input.

    Returns:
        float32 tensor B x in_chans x img_size x img_size.
    """
    # Copy numpy input: the dataset reader returns read-only arrays, which torch refuses to share (and uint8 is cheap).
    x = torch.from_numpy(images_uint8.copy()) if isinstance(images_uint8, np.ndarray) else images_uint8
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(1)  # (B, 1, H, W)
    if x.ndim != 4:
        raise ValueError(f"expected B x H x W or B x C x H x W images, got shape {tuple(x.shape)}")
    x = (x.float() / 255.0 - FMNIST_MEAN) / FMNIST_STD
    if x.shape[-2:] != (img_size, img_size):
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    if x.shape[1] == in_chans:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, in_chans, -1, -1).contiguous()  # (B, in_chans, img_size, img_size)
    raise ValueError(f"cannot map {x.shape[1]} input channels to in_chans={in_chans}")
