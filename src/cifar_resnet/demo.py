"""The embedded demo dataset: ten classes of procedurally drawn shapes and textures in the CIFAR-10
binary layout, so the whole workflow runs (and learns) in minutes without downloading anything.

Every class is defined by its shape alone: colours, polarity, contrast, position, size, rotation,
shading and noise are random, and no class is the mirror image or a shifted copy of another, so random
crops and horizontal flips (the paper's augmentation) keep every label valid. The variation is chosen
so that the demo's short schedules leave the paper's ResNet-20 short of perfect (about 90 to 95 % test
accuracy), where the variants and depths differ by more than the seeds do.
"""

from __future__ import annotations

import gzip
import tarfile
from io import BytesIO
from pathlib import Path, PurePosixPath

import numpy as np

from cifar_resnet.errors import StudyError
from cifar_resnet.files import atomic_output
from cifar_resnet.sources import DEMO

SIZE = 32
CLASS_NAMES = (
    "disc",
    "ring",
    "square",
    "triangle",
    "cross",
    "horizontal_stripes",
    "checkerboard",
    "diagonal_stripes",
    "dots",
    "flower",
)


def write_demo_archive(path: Path, seed: int = 0, train_size: int = 2000, test_size: int = 1000) -> None:
    """Write the demo set as a .tar.gz that is byte-identical for the same arguments."""
    if train_size < len(DEMO.train_members) or test_size < 1:
        raise StudyError(
            f"the demo dataset needs at least {len(DEMO.train_members)} training images (one per batch "
            f"file) and one test image, got {train_size} and {test_size}; raise the sizes in the config."
        )
    rng = np.random.default_rng(seed)
    train_images, train_labels = draw_dataset(rng, train_size)
    test_images, test_labels = draw_dataset(rng, test_size)
    batch_count = len(DEMO.train_members)
    batches = zip(
        np.array_split(train_images, batch_count), np.array_split(train_labels, batch_count), strict=True
    )
    members = {
        name: to_records(images, labels)
        for name, (images, labels) in zip(DEMO.train_members, batches, strict=True)
    }
    members[DEMO.test_member] = to_records(test_images, test_labels)
    members[DEMO.class_names_member] = ("\n".join(CLASS_NAMES) + "\n").encode()
    with atomic_output(path) as temporary:
        write_reproducible_tar_gz(temporary, members)


def to_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10 records: one label byte, then the image channel by channel, row-major."""
    return np.concatenate(
        [labels[:, None].astype(np.uint8), images.reshape(len(images), -1)], axis=1
    ).tobytes()


def write_reproducible_tar_gz(path: Path, members: dict[str, bytes]) -> None:
    # gzip stores a file name and a time stamp in its header, tar an owner and a time per member:
    # all are fixed (TarInfo defaults to mtime 0, uid/gid 0, no owner names) so the bytes depend
    # only on the content.
    folder = tarfile.TarInfo(str(PurePosixPath(DEMO.test_member).parent))
    folder.type, folder.mode = tarfile.DIRTYPE, 0o755
    with (
        open(path, "wb") as file,
        gzip.GzipFile(filename="", mode="wb", fileobj=file, mtime=0, compresslevel=6) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.USTAR_FORMAT) as archive,
    ):
        archive.addfile(folder)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, BytesIO(data))


# --- drawing --------------------------------------------------------------------------------------


def draw_dataset(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (uint8 [N, 3, 32, 32]) with balanced, shuffled labels."""
    labels = rng.permutation(np.arange(count) % len(CLASS_NAMES))
    mask = np.empty((count, 1, SIZE, SIZE))
    for label, draw_mask in enumerate(SHAPES):
        chosen = labels == label
        mask[chosen, 0] = draw_mask(rng, int(chosen.sum()))
    foreground, background = contrasting_colours(rng, count)
    images = background + (foreground - background) * mask
    shaded = images * shading(rng, count)
    noisy = shaded + rng.normal(0, rng.uniform(0.03, 0.1, (count, 1, 1, 1)), images.shape)
    return np.round(np.clip(noisy, 0, 1) * 255).astype(np.uint8), labels


def contrasting_colours(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background colours [N, 3, 1, 1], one light and one dark, which is which at
    random: the shape is the class, not its polarity. The two ranges overlap a little, so a few images
    have low contrast in some channel."""
    light, dark = rng.uniform(0.4, 1, (count, 3, 1, 1)), rng.uniform(0, 0.6, (count, 3, 1, 1))
    dark_on_light = rng.random((count, 1, 1, 1)) < 0.5
    return np.where(dark_on_light, dark, light), np.where(dark_on_light, light, dark)


def shading(rng: np.random.Generator, count: int) -> np.ndarray:
    """A random linear illumination gradient [N, 1, 32, 32] around 1."""
    rows, columns = centred_grid()
    slope_y, slope_x = rng.uniform(-0.1, 0.1, (2, count, 1, 1)) / SIZE
    return (1 + slope_y * rows + slope_x * columns)[:, None]


def centred_grid() -> tuple[np.ndarray, np.ndarray]:
    centre = (SIZE - 1) / 2
    rows, columns = np.mgrid[0:SIZE, 0:SIZE] - centre
    return rows.astype(float), columns.astype(float)


def frame(rng: np.random.Generator, count: int, shift: float, max_degrees: float, base_degrees=0.0):
    """Pixel coordinates (u along, v across) [N, 32, 32] in a randomly shifted and rotated frame; y
    points down. ``base_degrees`` may be an array to give each image its own base orientation."""
    rows, columns = centred_grid()
    dy, dx = rng.uniform(-shift, shift, (2, count, 1, 1))
    angle = np.radians(base_degrees + rng.uniform(-max_degrees, max_degrees, (count, 1, 1)))
    y, x = rows - dy, columns - dx
    return np.cos(angle) * x + np.sin(angle) * y, -np.sin(angle) * x + np.cos(angle) * y


def inside(signed_distance: np.ndarray) -> np.ndarray:
    """Mask in [0, 1] from a signed distance in pixels (negative inside), anti-aliased over a pixel."""
    return np.clip(0.5 - signed_distance, 0, 1)


def sizes(rng: np.random.Generator, count: int, low: float, high: float) -> np.ndarray:
    return rng.uniform(low, high, (count, 1, 1))


def disc(rng, count):
    u, v = frame(rng, count, shift=3, max_degrees=0)
    return inside(np.hypot(u, v) - sizes(rng, count, 8, 11))


def ring(rng, count):
    u, v = frame(rng, count, shift=3, max_degrees=0)
    return inside(np.abs(np.hypot(u, v) - sizes(rng, count, 8, 11)) - sizes(rng, count, 1.2, 2.2))


def square(rng, count):
    u, v = frame(rng, count, shift=3, max_degrees=10)
    return inside(np.maximum(np.abs(u), np.abs(v)) - sizes(rng, count, 7, 10))


def triangle(rng, count):
    """Equilateral, apex up (so mirroring keeps it a triangle), centred halfway between apex and base."""
    u, v = frame(rng, count, shift=3, max_degrees=10)
    inradius = sizes(rng, count, 5.5, 7.5)
    v = v - inradius / 2  # from the centroid, the apex is twice as far as the base
    # Distance beyond the base (outward normal down) and the two sides (normals up-right, up-left).
    edges = np.stack([v, 0.866 * u - 0.5 * v, -0.866 * u - 0.5 * v])
    return inside(edges.max(axis=0) - inradius)


def cross(rng, count):
    u, v = frame(rng, count, shift=3, max_degrees=10)
    half_width, half_length = sizes(rng, count, 2, 3), sizes(rng, count, 9, 12)
    horizontal_bar = np.maximum(np.abs(v) - half_width, np.abs(u) - half_length)
    vertical_bar = np.maximum(np.abs(u) - half_width, np.abs(v) - half_length)
    return inside(np.minimum(horizontal_bar, vertical_bar))


def stripes_across(v: np.ndarray, period: np.ndarray, duty: np.ndarray) -> np.ndarray:
    """Signed distance (pixels) to stripes running along u, ``duty`` of each period inside."""
    return (np.abs(np.mod(v / period, 1) - 0.5) - duty / 2) * period


def horizontal_stripes(rng, count):
    u, v = frame(rng, count, shift=SIZE, max_degrees=10)
    return inside(stripes_across(v, sizes(rng, count, 5, 9), sizes(rng, count, 0.35, 0.6)))


def diagonal_stripes(rng, count):
    # Both diagonals, so that a horizontal flip maps the class onto itself.
    u, v = frame(
        rng, count, shift=SIZE, max_degrees=10, base_degrees=rng.choice([-45.0, 45.0], (count, 1, 1))
    )
    return inside(stripes_across(v, sizes(rng, count, 5, 9), sizes(rng, count, 0.35, 0.6)))


def checkerboard(rng, count):
    u, v = frame(rng, count, shift=SIZE, max_degrees=10)
    cell = sizes(rng, count, 3.5, 6.5)
    along_u, along_v = inside(stripes_across(u, 2 * cell, 0.5)), inside(stripes_across(v, 2 * cell, 0.5))
    # A cell is on where exactly one of the two stripe patterns is: a soft exclusive or.
    return along_u + along_v - 2 * along_u * along_v


def dots(rng, count):
    u, v = frame(rng, count, shift=SIZE, max_degrees=10)
    spacing = sizes(rng, count, 6, 9)
    offset_u = (np.mod(u / spacing, 1) - 0.5) * spacing
    offset_v = (np.mod(v / spacing, 1) - 0.5) * spacing
    return inside(np.hypot(offset_u, offset_v) - sizes(rng, count, 1.3, 2.3))


def flower(rng, count):
    """A disc whose radius swings in five to seven rounded petals."""
    u, v = frame(rng, count, shift=3, max_degrees=0)
    petals = rng.integers(5, 8, (count, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (count, 1, 1))
    depth = sizes(rng, count, 0.25, 0.4)
    radius = sizes(rng, count, 8, 11) * (1 + depth * np.sin(petals * np.arctan2(v, u) + phase))
    return inside(np.hypot(u, v) - radius)


SHAPES = (
    disc,
    ring,
    square,
    triangle,
    cross,
    horizontal_stripes,
    checkerboard,
    diagonal_stripes,
    dots,
    flower,
)
