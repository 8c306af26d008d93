"""Reading a CIFAR binary archive (cifar_resnet.archive), and the small archives the dataset tests
build too."""

from __future__ import annotations

import io
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_resnet import sources
from cifar_resnet.archive import read_archive
from cifar_resnet.errors import StudyError

# The official layouts with any number of records per member, so tests can use a few.
SMALL_CIFAR10 = replace(sources.CIFAR10, records_per_train_member=None, test_records=None)
SMALL_CIFAR100 = replace(sources.CIFAR100, records_per_train_member=None, test_records=None)
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def random_images(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)


def records(images: np.ndarray, *label_columns: np.ndarray) -> bytes:
    """Binary CIFAR records: the label bytes, then 1024 R, 1024 G and 1024 B bytes, row-major."""
    labels = np.stack(label_columns, axis=1).astype(np.uint8)
    return np.concatenate([labels, images.reshape(len(images), -1)], axis=1).tobytes()


def tar_member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    return info, data


def write_archive(path, members: dict[str, bytes], extra: tuple = ()) -> None:
    """A .tar.gz of ``members`` followed by the ``extra`` (TarInfo, data) pairs."""
    with tarfile.open(path, "w:gz") as archive:
        for info, data in [tar_member(name, data) for name, data in members.items()] + list(extra):
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)


def cifar10_members(rng: np.random.Generator, per_batch: int = 4, test: int = 6) -> tuple[dict, dict]:
    """Small CIFAR-10 members and the arrays they encode (train in batch order)."""
    train_images, test_images = random_images(rng, 5 * per_batch), random_images(rng, test)
    train_labels, test_labels = rng.integers(0, 10, 5 * per_batch), rng.integers(0, 10, test)
    members = {
        name: records(
            train_images[i * per_batch : (i + 1) * per_batch],
            train_labels[i * per_batch : (i + 1) * per_batch],
        )
        for i, name in enumerate(SMALL_CIFAR10.train_members)
    }
    members[SMALL_CIFAR10.test_member] = records(test_images, test_labels)
    members[SMALL_CIFAR10.class_names_member] = ("\n".join(CIFAR10_NAMES) + "\n\n").encode()
    encoded = dict(
        train_images=train_images, train_labels=train_labels, test_images=test_images, test_labels=test_labels
    )
    return members, encoded


def write_cifar10_archive(folder: Path) -> tuple[Path, dict]:
    """A small CIFAR-10 archive in ``folder``, and the arrays it encodes."""
    members, encoded = cifar10_members(np.random.default_rng(0))
    write_archive(folder / "cifar10.tar.gz", members)
    return folder / "cifar10.tar.gz", encoded


@pytest.fixture
def cifar10_archive(tmp_path):
    return write_cifar10_archive(tmp_path)


def test_cifar10_records_and_pixel_layout_round_trip(cifar10_archive):
    path, encoded = cifar10_archive
    raw = read_archive(path, SMALL_CIFAR10)
    assert raw.train_images.dtype == torch.uint8 and raw.train_images.shape == (20, 3, 32, 32)
    assert raw.train_labels.dtype == torch.int64
    for key, expected in encoded.items():
        assert torch.equal(getattr(raw, key), torch.from_numpy(expected).to(getattr(raw, key).dtype)), key
    assert raw.class_names == CIFAR10_NAMES


def test_record_bytes_are_label_then_red_green_blue_planes_row_major(tmp_path):
    members, _ = cifar10_members(np.random.default_rng(1), per_batch=1, test=1)
    record = bytearray(3073)
    record[0] = 7
    record[1 + 1024 + 2 * 32 + 5] = 200  # green, row 2, column 5
    record[1 + 2048 + 31 * 32 + 0] = 99  # blue, row 31, column 0
    members[SMALL_CIFAR10.test_member] = bytes(record)
    write_archive(tmp_path / "a.tar.gz", members)
    raw = read_archive(tmp_path / "a.tar.gz", SMALL_CIFAR10)
    assert raw.test_labels.tolist() == [7]
    assert raw.test_images[0, 1, 2, 5] == 200 and raw.test_images[0, 2, 31, 0] == 99
    assert raw.test_images.sum() == 299


def test_cifar100_uses_the_fine_label(tmp_path):
    rng = np.random.default_rng(2)
    train_images, test_images = random_images(rng, 7), random_images(rng, 3)
    coarse, fine = rng.integers(0, 20, 7), np.array([99, 0, 55, 3, 42, 17, 98])
    write_archive(
        tmp_path / "c100.tar.gz",
        {
            "cifar-100-binary/train.bin": records(train_images, coarse, fine),
            "cifar-100-binary/test.bin": records(test_images, np.array([19, 0, 5]), np.array([5, 64, 99])),
            "cifar-100-binary/fine_label_names.txt": "\n".join(f"fine{i}" for i in range(100)).encode(),
            "cifar-100-binary/coarse_label_names.txt": "\n".join(f"coarse{i}" for i in range(20)).encode(),
        },
    )
    raw = read_archive(tmp_path / "c100.tar.gz", SMALL_CIFAR100)
    assert raw.train_labels.tolist() == fine.tolist()
    assert raw.test_labels.tolist() == [5, 64, 99]
    assert torch.equal(raw.train_images, torch.from_numpy(train_images))
    assert raw.class_names[99] == "fine99" and len(raw.class_names) == 100


def test_the_official_sources_insist_on_the_official_record_counts(cifar10_archive):
    path, _ = cifar10_archive
    with pytest.raises(StudyError, match=r"data_batch_1\.bin .* holds 4 records instead of 10000"):
        read_archive(path, sources.CIFAR10)


def test_a_member_that_is_not_whole_records_is_refused(tmp_path):
    members, _ = cifar10_members(np.random.default_rng(3))
    members[SMALL_CIFAR10.train_members[2]] += b"\x00"
    write_archive(tmp_path / "a.tar.gz", members)
    with pytest.raises(StudyError, match=r"data_batch_3\.bin .* not a positive whole number of 3073-byte"):
        read_archive(tmp_path / "a.tar.gz", SMALL_CIFAR10)


def test_labels_out_of_range_are_refused(tmp_path):
    members, _ = cifar10_members(np.random.default_rng(4))
    members[SMALL_CIFAR10.test_member] = records(
        random_images(np.random.default_rng(5), 2), np.array([3, 10])
    )
    write_archive(tmp_path / "a.tar.gz", members)
    with pytest.raises(StudyError, match=r"test_batch\.bin .* has label 10 but cifar10 has only 10 classes"):
        read_archive(tmp_path / "a.tar.gz", SMALL_CIFAR10)


def test_a_missing_batch_file_is_named(tmp_path):
    members, _ = cifar10_members(np.random.default_rng(6))
    del members["cifar-10-batches-bin/data_batch_4.bin"]
    write_archive(tmp_path / "a.tar.gz", members)
    with pytest.raises(StudyError, match=r"has no member cifar-10-batches-bin/data_batch_4\.bin"):
        read_archive(tmp_path / "a.tar.gz", SMALL_CIFAR10)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_a_truncated_archive_is_reported_as_such(cifar10_archive, tmp_path, keep):
    path, _ = cifar10_archive
    data = path.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(StudyError, match=r"archive .*truncated\.tar\.gz is truncated or corrupt"):
        read_archive(truncated, SMALL_CIFAR10)


def test_a_file_that_is_not_a_gzip_archive_is_reported_as_corrupt(tmp_path):
    (tmp_path / "junk.tar.gz").write_bytes(b"this is not an archive" * 100)
    with pytest.raises(StudyError, match="is truncated or corrupt"):
        read_archive(tmp_path / "junk.tar.gz", SMALL_CIFAR10)


def test_a_missing_archive_is_a_study_error(tmp_path):
    with pytest.raises(StudyError, match="does not exist"):
        read_archive(tmp_path / "absent.tar.gz", SMALL_CIFAR10)


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        (tar_member("cifar-10-batches-bin/../../evil.bin", b"x"), "'..' path component"),
        (tar_member("/tmp/evil.bin", b"x"), "absolute path"),
        (tar_member("cifar-10-batches-bin/link", kind=tarfile.SYMTYPE, link="/etc/passwd"), "symbolic link"),
        (tar_member("cifar-10-batches-bin/hard", kind=tarfile.LNKTYPE, link="/etc/passwd"), "hard link"),
        (tar_member("cifar-10-batches-bin/dev", kind=tarfile.CHRTYPE), "device, fifo"),
        (tar_member("cifar-10-batches-bin/fifo", kind=tarfile.FIFOTYPE), "device, fifo"),
    ],
)
def test_unsafe_members_are_refused_by_name_even_after_the_valid_ones(tmp_path, member, problem):
    members, _ = cifar10_members(np.random.default_rng(7))
    write_archive(tmp_path / "unsafe.tar.gz", members, extra=[member])
    with pytest.raises(StudyError, match="unsafe member") as error:
        read_archive(tmp_path / "unsafe.tar.gz", SMALL_CIFAR10)
    assert repr(member[0].name) in str(error.value) and problem in str(error.value)
