"""Fetching an official archive (cifar_resnet.download)."""

from __future__ import annotations

import hashlib
import socket

import numpy as np
import pytest

from cifar_resnet import download, sources
from cifar_resnet.errors import StudyError


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_download_fetches_and_verifies_the_archive(served, tmp_path):
    folder, url = served
    payload = np.random.default_rng(8).bytes(3_000_000)  # several read chunks
    (folder / "archive.tar.gz").write_bytes(payload)
    destination = tmp_path / "data" / "archive.tar.gz"
    assert download.download(f"{url}/archive.tar.gz", destination, md5_of(payload)) == destination
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
        download.download(f"{url}/archive.tar.gz", destination, expected)
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
        download.download(url, tmp_path / "a.tar.gz", "0" * 32)
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
        download.download(url, destination, sources.CIFAR10.md5, timeout=5)
    message = str(error.value)
    assert url in message and f"place the official archive at {destination}" in message
    assert "data.archives." in message and "verify its checksum" in message
    assert not destination.exists()


def test_an_http_error_is_a_download_failure_with_its_status(served, tmp_path):
    _, url = served
    with pytest.raises(StudyError, match=r"could not download .*missing\.tar\.gz \(HTTP 404"):
        download.download(f"{url}/missing.tar.gz", tmp_path / "a.tar.gz", "0" * 32)


def test_verify_md5_accepts_the_right_checksum_and_names_both_for_a_wrong_one(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"content")
    download.verify_md5(archive, md5_of(b"content").upper())
    with pytest.raises(StudyError, match=f"has md5 {md5_of(b'content')} instead of the expected {'1' * 32}"):
        download.verify_md5(archive, "1" * 32)


def test_copy_verified_copies_a_good_local_archive_and_refuses_a_bad_one(tmp_path):
    local = tmp_path / "local.tar.gz"
    local.write_bytes(b"official")
    destination = tmp_path / "data" / "archive.tar.gz"
    download.copy_verified(local, destination, md5_of(b"official"))
    assert destination.read_bytes() == b"official"
    with pytest.raises(StudyError, match="not the official archive"):
        download.copy_verified(local, tmp_path / "other.tar.gz", md5_of(b"something else"))
    assert not (tmp_path / "other.tar.gz").exists()
