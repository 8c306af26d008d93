from __future__ import annotations

import hashlib
import http.server
import io
import socket
import tarfile
import threading
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch

from cifar_resnet import datasets, sources
from cifar_resnet.errors import StudyError
from cifar_resnet.files import load_tensors, save_tensors

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


@pytest.fixture
def cifar10_archive(tmp_path):
    members, encoded = cifar10_members(np.random.default_rng(0))
    write_archive(tmp_path / "cifar10.tar.gz", members)
    return tmp_path / "cifar10.tar.gz", encoded


# --- reading --------------------------------------------------------------------------------------------


def test_cifar10_records_and_pixel_layout_round_trip(cifar10_archive):
    path, encoded = cifar10_archive
    raw = datasets.read_archive(path, SMALL_CIFAR10)
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
    raw = datasets.read_archive(tmp_path / "a.tar.gz", SMALL_CIFAR10)
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
    raw = datasets.read_archive(tmp_path / "c100.tar.gz", SMALL_CIFAR100)
    assert raw.train_labels.tolist() == fine.tolist()
    assert raw.test_labels.tolist() == [5, 64, 99]
    assert torch.equal(raw.train_images, torch.from_numpy(train_images))
    assert raw.class_names[99] == "fine99" and len(raw.class_names) == 100


def test_the_official_sources_insist_on_the_official_record_counts(cifar10_archive):
    path, _ = cifar10_archive
    with pytest.raises(StudyError, match=r"data_batch_1\.bin .* holds 4 records instead of 10000"):
        datasets.read_archive(path, sources.CIFAR10)


def test_a_member_that_is_not_whole_records_is_refused(tmp_path):
    members, _ = cifar10_members(np.random.default_rng(3))
    members[SMALL_CIFAR10.train_members[2]] += b"\x00"
    write_archive(tmp_path / "a.tar.gz", members)
    with pytest.raises(StudyError, match=r"data_batch_3\.bin .* not a positive whole number of 3073-byte"):
        datasets.read_archive(tmp_path / "a.tar.gz", SMALL_CIFAR10)


def test_labels_out_of_range_are_refused(tmp_path):
    members, _ = cifar10_members(np.random.default_rng(4))
    members[SMALL_CIFAR10.test_member] = records(
        random_images(np.random.default_rng(5), 2), np.array([3, 10])
    )
    write_archive(tmp_path / "a.tar.gz", members)
    with pytest.raises(StudyError, match=r"test_batch\.bin .* has label 10 but cifar10 has only 10 classes"):
        datasets.read_archive(tmp_path / "a.tar.gz", SMALL_CIFAR10)


def test_a_missing_batch_file_is_named(tmp_path):
    members, _ = cifar10_members(np.random.default_rng(6))
    del members["cifar-10-batches-bin/data_batch_4.bin"]
    write_archive(tmp_path / "a.tar.gz", members)
    with pytest.raises(StudyError, match=r"has no member cifar-10-batches-bin/data_batch_4\.bin"):
        datasets.read_archive(tmp_path / "a.tar.gz", SMALL_CIFAR10)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_a_truncated_archive_is_reported_as_such(cifar10_archive, tmp_path, keep):
    path, _ = cifar10_archive
    data = path.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(StudyError, match=r"archive .*truncated\.tar\.gz is truncated or corrupt"):
        datasets.read_archive(truncated, SMALL_CIFAR10)


def test_a_file_that_is_not_a_gzip_archive_is_reported_as_corrupt(tmp_path):
    (tmp_path / "junk.tar.gz").write_bytes(b"this is not an archive" * 100)
    with pytest.raises(StudyError, match="is truncated or corrupt"):
        datasets.read_archive(tmp_path / "junk.tar.gz", SMALL_CIFAR10)


def test_a_missing_archive_is_a_study_error(tmp_path):
    with pytest.raises(StudyError, match="does not exist"):
        datasets.read_archive(tmp_path / "absent.tar.gz", SMALL_CIFAR10)


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
        datasets.read_archive(tmp_path / "unsafe.tar.gz", SMALL_CIFAR10)
    assert repr(member[0].name) in str(error.value) and problem in str(error.value)


def test_get_source_knows_the_three_datasets_and_lists_them_for_an_unknown_one():
    assert sources.get_source("cifar100").num_classes == 100
    assert sources.get_source("demo").url is None
    with pytest.raises(StudyError, match="unknown dataset 'imagenet'; choose one of cifar10, cifar100, demo"):
        sources.get_source("imagenet")


def test_each_source_says_whether_it_is_downloaded_and_compared_with_the_paper():
    assert sources.downloaded_datasets() == ["cifar10", "cifar100"]
    assert not sources.DEMO.downloaded  # generated by the workflow
    assert [name for name, source in sources.DATASETS.items() if source.paper_reference] == ["cifar10"]


# --- download -------------------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1, and its base URL."""
    folder = tmp_path / "served"
    folder.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_download_fetches_and_verifies_the_archive(served, tmp_path):
    folder, url = served
    payload = np.random.default_rng(8).bytes(3_000_000)  # several read chunks
    (folder / "archive.tar.gz").write_bytes(payload)
    destination = tmp_path / "data" / "archive.tar.gz"
    assert datasets.download(f"{url}/archive.tar.gz", destination, md5_of(payload)) == destination
    assert destination.read_bytes() == payload
    assert sorted(p.name for p in destination.parent.iterdir()) == ["archive.tar.gz"]


@pytest.mark.parametrize("existing", [None, b"the previous, good archive"])
def test_a_wrong_checksum_leaves_the_destination_as_it_was(served, tmp_path, existing):
    folder, url = served
    (folder / "archive.tar.gz").write_bytes(b"corrupted download")
    destination = tmp_path / "data" / "archive.tar.gz"
    if existing is not None:
        destination.parent.mkdir()
        destination.write_bytes(existing)
    expected = md5_of(b"the official archive")
    with pytest.raises(StudyError) as error:
        datasets.download(f"{url}/archive.tar.gz", destination, expected)
    message = str(error.value)
    assert (
        expected in message
        and md5_of(b"corrupted download") in message
        and f"{url}/archive.tar.gz" in message
    )
    if existing is None:
        assert not destination.exists()
    else:
        assert destination.read_bytes() == existing
    assert [p.name for p in destination.parent.iterdir()] == ([] if existing is None else ["archive.tar.gz"])


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/cifar.tar.gz",
        "http://10.0.0.1/cifar.tar.gz",
        "ftp://127.0.0.1/c.tar.gz",
        "file:///etc/passwd",
    ],
)
def test_only_https_or_loopback_http_is_allowed(tmp_path, url):
    with pytest.raises(StudyError, match="only https URLs"):
        datasets.download(url, tmp_path / "a.tar.gz", "0" * 32)
    assert not (tmp_path / "a.tar.gz").exists()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_an_unreachable_url_explains_how_to_work_offline(tmp_path, host):
    url = f"http://{host}:{closed_port()}/cifar-10-binary.tar.gz"
    destination = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    with pytest.raises(StudyError, match="could not download") as error:
        datasets.download(url, destination, sources.CIFAR10.md5, timeout=5)
    message = str(error.value)
    assert url in message and f"place the official archive at {destination}" in message
    assert "data.archives." in message and "verify its checksum" in message
    assert not destination.exists()


def test_an_http_error_is_a_download_failure_with_its_status(served, tmp_path):
    _, url = served
    with pytest.raises(StudyError, match=r"could not download .*missing\.tar\.gz \(HTTP 404"):
        datasets.download(f"{url}/missing.tar.gz", tmp_path / "a.tar.gz", "0" * 32)


def test_verify_md5_accepts_the_right_checksum_and_names_both_for_a_wrong_one(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"content")
    datasets.verify_md5(archive, md5_of(b"content").upper())
    with pytest.raises(StudyError, match=f"has md5 {md5_of(b'content')} instead of the expected {'1' * 32}"):
        datasets.verify_md5(archive, "1" * 32)


def test_copy_verified_copies_a_good_local_archive_and_refuses_a_bad_one(tmp_path):
    local = tmp_path / "local.tar.gz"
    local.write_bytes(b"official")
    destination = tmp_path / "data" / "archive.tar.gz"
    datasets.copy_verified(local, destination, md5_of(b"official"))
    assert destination.read_bytes() == b"official"
    with pytest.raises(StudyError, match="not the official archive"):
        datasets.copy_verified(local, tmp_path / "other.tar.gz", md5_of(b"something else"))
    assert not (tmp_path / "other.tar.gz").exists()


# --- splitting ------------------------------------------------------------------------------------------


def per_class(labels: torch.Tensor, indices: torch.Tensor) -> list[int]:
    return torch.bincount(labels[indices], minlength=int(labels.max()) + 1).tolist()


def test_the_paper_split_of_fifty_thousand_balanced_images():
    labels = torch.arange(50_000) % 10
    train, val = datasets.split_indices(labels, 0.1, seed=0)
    assert (len(train), len(val)) == (45_000, 5_000)
    assert per_class(labels, val) == [500] * 10
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(50_000))
    assert torch.equal(train, torch.sort(train).values) and torch.equal(val, torch.sort(val).values)


def test_split_is_deterministic_per_seed_and_ignores_the_global_rng():
    labels = torch.arange(1_000) % 7
    torch.manual_seed(1)
    first = datasets.split_indices(labels, 0.2, seed=3)
    torch.manual_seed(2)
    torch.rand(10)
    again = datasets.split_indices(labels, 0.2, seed=3)
    other = datasets.split_indices(labels, 0.2, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], other[1])
    assert per_class(labels, first[1]) == per_class(labels, other[1])


def test_split_is_stratified_and_exact_for_uneven_classes():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20 + [3] * 7)[
        torch.randperm(107, generator=torch.Generator().manual_seed(0))
    ]
    train, val = datasets.split_indices(labels, 0.1, seed=0)
    assert per_class(labels, val) == [5, 3, 2, 1]  # 10.7 rounds to 11: the largest remainder (0.7) gets one
    assert len(train) == 96 and not set(train.tolist()) & set(val.tolist())


def test_split_total_is_exact_where_rounding_each_class_would_miss_it():
    labels = torch.arange(15) % 3  # a 0.5 share per class: per-class rounding gives 0 or 3, not 2
    _, val = datasets.split_indices(labels, 0.1, seed=0)
    assert len(val) == 2 and max(per_class(labels, val)) == 1


def test_split_refuses_a_fraction_outside_zero_to_one():
    with pytest.raises(StudyError, match="validation fraction 1.0 must be at least 0 and below 1"):
        datasets.split_indices(torch.arange(10) % 2, 1.0, seed=0)


# --- preparing and loading ------------------------------------------------------------------------------


@pytest.fixture
def prepared(cifar10_archive, tmp_path):
    archive, encoded = cifar10_archive
    output = tmp_path / "prepared" / "cifar10.pt"
    datasets.prepare_dataset(archive, output, SMALL_CIFAR10, validation_fraction=0.25, split_seed=5)
    return output, archive, encoded


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = images.double().div(255).transpose(0, 1).reshape(3, -1)
    return pixels.mean(1).float(), pixels.std(1, unbiased=False).float()


def test_prepare_then_load_round_trip_with_train_only_statistics(prepared):
    output, archive, encoded = prepared
    loaded = datasets.load_prepared(output)
    assert set(loaded) == {
        "train_images",
        "train_labels",
        "val_images",
        "val_labels",
        "mean",
        "std",
        "class_names",
        "num_classes",
    }
    assert loaded["train_images"].dtype == torch.uint8 and len(loaded["train_images"]) == 15
    assert len(loaded["val_images"]) == 5
    assert loaded["class_names"] == CIFAR10_NAMES and loaded["num_classes"] == 10

    train, val = datasets.split_indices(torch.from_numpy(encoded["train_labels"]), 0.25, seed=5)
    all_train_images = torch.from_numpy(encoded["train_images"])
    assert torch.equal(loaded["train_images"], all_train_images[train])
    assert torch.equal(loaded["val_images"], all_train_images[val])
    assert torch.equal(loaded["val_labels"], torch.from_numpy(encoded["train_labels"])[val])

    mean, std = channel_stats(loaded["train_images"])
    assert loaded["mean"].dtype == torch.float32 and loaded["mean"].shape == (3,)
    assert torch.allclose(loaded["mean"], mean, atol=1e-6) and torch.allclose(loaded["std"], std, atol=1e-6)
    assert not torch.allclose(loaded["mean"], channel_stats(all_train_images)[0], atol=1e-5)

    stored = load_tensors(output)
    assert stored["archive_md5"] == hashlib.md5(archive.read_bytes()).hexdigest()
    assert (stored["dataset"], stored["validation_fraction"], stored["split_seed"]) == ("cifar10", 0.25, 5)


def test_the_test_split_is_loaded_only_when_asked_for(prepared):
    output, _, encoded = prepared
    loaded = datasets.load_prepared(output, splits=("test",))
    assert not any(key.startswith(("train", "val")) for key in loaded)
    assert torch.equal(loaded["test_images"], torch.from_numpy(encoded["test_images"]))
    with pytest.raises(StudyError, match="unknown split 'validation'"):
        datasets.load_prepared(output, splits=("validation",))


@pytest.mark.parametrize(
    ("key", "value", "expected", "found"),
    [
        (
            "train_images",
            lambda d: d.float(),
            "a torch.uint8 tensor of shape [N, 3, 32, 32]",
            "torch.float32",
        ),
        ("train_images", lambda d: d[:, :, :28, :28], "[N, 3, 32, 32]", "shape [15, 3, 28, 28]"),
        (
            "val_labels",
            lambda d: d.int(),
            "a torch.int64 tensor of shape [5]",
            "a torch.int32 tensor of shape [5]",
        ),
        ("val_labels", lambda d: d[:3], "shape [5]", "shape [3]"),
        ("train_labels", lambda d: d + 10, "labels from 0 to 9", "labels from 10 to"),
        ("mean", lambda d: d.double(), "a torch.float32 tensor of shape [3]", "torch.float64"),
        ("val_images", lambda d: None, "a torch.uint8 tensor", "nothing under 'val_images'"),
    ],
)
def test_load_prepared_names_the_file_key_and_what_is_wrong(prepared, tmp_path, key, value, expected, found):
    output, _, _ = prepared
    stored = load_tensors(output)
    stored[key] = value(stored[key])
    if stored[key] is None:
        del stored[key]
    broken = tmp_path / "broken.pt"
    save_tensors(broken, stored)
    with pytest.raises(StudyError) as error:
        datasets.load_prepared(broken)
    message = str(error.value)
    assert str(broken) in message and repr(key) in message and expected in message and found in message


def test_load_prepared_refuses_a_file_that_is_not_a_prepared_dataset(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(StudyError, match=r"junk\.pt cannot be read"):
        datasets.load_prepared(tmp_path / "junk.pt")
    with pytest.raises(StudyError, match="does not exist; run the data preparation"):
        datasets.load_prepared(tmp_path / "absent.pt")
