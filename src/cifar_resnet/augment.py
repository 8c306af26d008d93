"""Batched augmentation on the tensor's own device: no PIL, no Python per image.

The paper's augmentation is a random 32x32 crop of the image zero-padded by 4 pixels and a random
horizontal flip; ``augment`` draws both for a whole set of uint8 images at once, and ``normalize``
turns uint8 batches into the network's float input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Each image shifted by its own random offset in [-padding, padding] along each axis, the area
    outside the original filled with zeros, exactly as a crop of the zero-padded image."""
    if padding == 0:
        return images
    count, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, count), generator=generator, device=images.device)
    rows = offsets[0, :, None] + torch.arange(height, device=images.device)
    columns = offsets[1, :, None] + torch.arange(width, device=images.device)
    batch = torch.arange(count, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channels, rows[:, None, :, None], columns[:, None, None, :]]


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def augment(images: torch.Tensor, crop_padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    images = random_crop(images, crop_padding, generator)
    return random_flip(images, generator) if flip else images


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] -> float32, scaled to [0,1] and standardised per channel."""
    return (images.float().div_(255) - mean[:, None, None]) / std[:, None, None]
