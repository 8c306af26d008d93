"""Fetching an official archive: download it over https (or http to this machine) or copy a local one,
the file appearing only once its md5 is verified.

Imports neither torch nor numpy, so the download job loads neither.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from cifar_resnet.errors import StudyError
from cifar_resnet.files import atomic_output
from cifar_resnet.sources import DATASETS

CHUNK_BYTES = 1 << 20


def download(url: str, destination: Path, md5: str, timeout: float = 60) -> Path:
    """Download ``url`` to ``destination``; the file appears there only once its md5 is verified."""
    check_url_allowed(url)
    destination = Path(destination)
    digest = hashlib.md5()
    with atomic_output(destination) as temporary:
        with open(temporary, "wb") as file:
            for chunk in stream_url(url, destination, timeout):
                digest.update(chunk)
                file.write(chunk)
        if digest.hexdigest() != md5.lower():
            raise StudyError(
                f"the file downloaded from {url} has md5 {digest.hexdigest()} instead of the expected "
                f"{md5.lower()}, so it is not the official archive and nothing was written to {destination}."
            )
    return destination


def check_url_allowed(url: str) -> None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "https" or (parsed.scheme == "http" and is_loopback(parsed.hostname)):
        return
    raise StudyError(f"refusing to download {url}: only https URLs (or http to this machine) are allowed.")


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def stream_url(url: str, destination: Path, timeout: float) -> Iterator[bytes]:
    """Yield the body of ``url`` in chunks; network failures become a StudyError with the offline remedy
    (errors writing the chunks happen in the caller and are not mistaken for network failures)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(CHUNK_BYTES):
                yield chunk
    except (OSError, http.client.HTTPException) as error:
        raise StudyError(
            f"could not download {url} ({network_failure_reason(error)}); without network, place the "
            f"official archive at {destination} (or set its path in the config under "
            f"data.archives.{dataset_name_for(url)}), where the workflow will verify its checksum."
        ) from error


def network_failure_reason(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__


def dataset_name_for(url: str) -> str:
    return next((source.name for source in DATASETS.values() if source.url == url), "<dataset>")


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, md5: str) -> None:
    if not Path(path).is_file():
        raise StudyError(f"archive {path} does not exist; download it or set its path in the config.")
    actual = file_md5(path)
    if actual != md5.lower():
        raise StudyError(
            f"archive {path} has md5 {actual} instead of the expected {md5.lower()}, so it is not the "
            "official archive; replace it with the official one."
        )


def copy_verified(local_copy: Path, destination: Path, md5: str) -> Path:
    """Copy a local archive (``data.archives`` in the config) to ``destination`` once its md5 is verified."""
    if not Path(local_copy).is_file():
        raise StudyError(
            f"the local archive {local_copy} named under data.archives in the config does not exist; "
            "correct the path, or remove the entry to download the archive."
        )
    verify_md5(local_copy, md5)
    with atomic_output(destination) as temporary:
        shutil.copyfile(local_copy, temporary)
    return Path(destination)
