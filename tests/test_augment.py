import pytest
import torch
import torch.nn.functional as F

from cifar_resnet.augment import augment, normalize, random_crop, random_flip


def images(count=64):
    return torch.randint(
        0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def test_crop_equals_a_window_of_the_zero_padded_image():
    batch = images()
    cropped = random_crop(batch, 4, torch.Generator().manual_seed(1))
    offsets = torch.randint(0, 9, (2, len(batch)), generator=torch.Generator().manual_seed(1))
    padded = F.pad(batch, (4, 4, 4, 4))
    for i in range(len(batch)):
        row, column = offsets[:, i].tolist()
        assert torch.equal(cropped[i], padded[i, :, row : row + 32, column : column + 32])


@pytest.mark.parametrize("padding", [1, 2, 4])
def test_crop_shifts_cover_the_whole_range(padding):
    batch = torch.ones(4000, 1, 32, 32, dtype=torch.uint8)
    cropped = random_crop(batch, padding, torch.Generator().manual_seed(0))
    zero_rows = (cropped[:, 0].sum(2) == 0).sum(1)  # rows of padding that entered the crop
    assert set(zero_rows.tolist()) == set(range(padding + 1))


def test_flip_mirrors_about_half_the_images():
    batch = images(1000)
    flipped = random_flip(batch, torch.Generator().manual_seed(0))
    mirrored = (flipped == batch.flip(3)).flatten(1).all(1)
    unchanged = (flipped == batch).flatten(1).all(1)
    assert bool((mirrored | unchanged).all())
    assert 400 < int(mirrored.sum()) < 600


def test_augment_keeps_shape_dtype_and_is_reproducible():
    batch = images()
    first = augment(batch, 4, True, torch.Generator().manual_seed(3))
    second = augment(batch, 4, True, torch.Generator().manual_seed(3))
    assert first.shape == batch.shape and first.dtype == torch.uint8
    assert torch.equal(first, second)
    assert not torch.equal(first, augment(batch, 4, True, torch.Generator().manual_seed(4)))
    assert torch.equal(augment(batch, 0, False, torch.Generator()), batch)


def test_normalize_scales_and_standardises_per_channel():
    batch = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.25, 0.0]), torch.tensor([0.5, 0.25, 1.0])
    out = normalize(batch, mean, std)
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.0, 3.0, 1.0]))
