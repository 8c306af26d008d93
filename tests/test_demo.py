from __future__ import annotations

import tarfile

import pytest
import torch

from cifar_resnet import sources
from cifar_resnet.archive import read_archive
from cifar_resnet.demo import CLASS_NAMES, write_demo_archive
from cifar_resnet.errors import StudyError


@pytest.fixture(scope="module")
def demo_archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "demo.tar.gz"
    write_demo_archive(path, seed=0, train_size=203, test_size=50)
    return path


def test_same_seed_gives_a_byte_identical_archive_and_another_seed_does_not(demo_archive, tmp_path):
    write_demo_archive(tmp_path / "again.tar.gz", seed=0, train_size=203, test_size=50)
    write_demo_archive(tmp_path / "other.tar.gz", seed=1, train_size=203, test_size=50)
    assert (tmp_path / "again.tar.gz").read_bytes() == demo_archive.read_bytes()
    assert (tmp_path / "other.tar.gz").read_bytes() != demo_archive.read_bytes()


def test_the_archive_records_no_time_owner_or_file_name(demo_archive):
    header = demo_archive.read_bytes()[:10]
    assert header[3] & 0x08 == 0, "gzip header carries a file name"
    assert header[4:8] == b"\0\0\0\0", "gzip header carries a time stamp"
    with tarfile.open(demo_archive) as archive:
        for member in archive.getmembers():
            assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", "")


def test_the_archive_has_the_cifar10_layout_with_the_train_set_in_five_batches(demo_archive):
    with tarfile.open(demo_archive) as archive:
        sizes = {member.name: member.size for member in archive.getmembers() if member.isfile()}
    record = sources.DEMO.record_bytes
    assert set(sizes) == {
        *sources.CIFAR10.train_members,
        sources.CIFAR10.test_member,
        sources.CIFAR10.class_names_member,
    }
    assert [sizes[name] // record for name in sources.CIFAR10.train_members] == [41, 41, 41, 40, 40]
    assert sizes[sources.CIFAR10.test_member] == 50 * record


def test_the_archive_reads_into_the_requested_sizes_with_every_class(demo_archive):
    raw = read_archive(demo_archive, sources.get_source("demo"))
    assert raw.train_images.shape == (203, 3, 32, 32) and raw.test_images.shape == (50, 3, 32, 32)
    assert raw.class_names == list(CLASS_NAMES) and len(CLASS_NAMES) == 10
    assert torch.bincount(raw.train_labels, minlength=10).tolist() == [21, 21, 21] + [20] * 7
    assert torch.bincount(raw.test_labels, minlength=10).tolist() == [5] * 10


def test_images_span_the_value_range_and_each_shows_a_clear_pattern(demo_archive):
    raw = read_archive(demo_archive, sources.DEMO)
    images = raw.train_images.float()
    assert images.min() < 20 and images.max() > 235
    per_image_range = images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3))
    assert per_image_range.min() > 80
    assert len(torch.unique(raw.train_images.reshape(203, -1), dim=0)) == 203


def test_labels_match_the_drawings_shapes_leave_the_corners_to_the_background(tmp_path):
    # 100 images per class: the shares below are measured, not sampled from a handful.
    write_demo_archive(tmp_path / "demo.tar.gz", seed=0, train_size=1000, test_size=10)
    raw = read_archive(tmp_path / "demo.tar.gz", sources.DEMO)
    grey = raw.train_images.float().mean(dim=1)
    corners = torch.stack([grey[:, :4, :4], grey[:, :4, -4:], grey[:, -4:, :4], grey[:, -4:, -4:]], dim=1)
    corner_means = corners.mean(dim=(2, 3))
    plain_corners = corner_means.amax(dim=1) - corner_means.amin(dim=1) < 25
    for label, name in enumerate(CLASS_NAMES):
        share = plain_corners[raw.train_labels == label].float().mean().item()
        if name in ("disc", "ring", "square", "triangle", "cross", "flower"):
            assert share >= 0.9, name
        else:
            assert share <= 0.5, name


def test_too_few_images_for_the_five_batches_are_refused(tmp_path):
    with pytest.raises(StudyError, match="at least 5 training images"):
        write_demo_archive(tmp_path / "demo.tar.gz", train_size=4)
    assert not (tmp_path / "demo.tar.gz").exists()
