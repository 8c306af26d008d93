"""The CIFAR datasets: download the official binary archives, read them safely, split and prepare them.

The binary archives are read in memory, member by member, and never extracted or unpickled: a record
is one or two label bytes followed by a 32x32 RGB image stored channel by channel, row-major.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import ipaddress
import math
import pickle
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NoReturn

import numpy as np
import torch

from cifar_resnet.errors import StudyError
from cifar_resnet.files import atomic_output, load_tensors, save_tensors

# The datasets are declared in the torch-free sources module; their names stay importable from here.
from cifar_resnet.sources import CIFAR10 as CIFAR10
from cifar_resnet.sources import CIFAR100 as CIFAR100
from cifar_resnet.sources import DATASETS, IMAGE_SHAPE, DatasetSource
from cifar_resnet.sources import DEMO as DEMO
from cifar_resnet.sources import get_source as get_source

SPLITS = ("train", "val", "test")
CHUNK_BYTES = 1 << 20


@dataclass
class RawDataset:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]


# --- download ---------------------------------------------------------------------------------------


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


# --- reading archives -------------------------------------------------------------------------------


def read_archive(path: Path, source: DatasetSource) -> RawDataset:
    """Read the training and test records and the class names from ``path`` without extracting it."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"archive {path} does not exist; download it or set its path in the config.")
    try:
        with tarfile.open(path, "r:gz") as archive:
            members = archive.getmembers()
            check_members_safe(path, members, source)
            contents = read_members(path, archive, members, source)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise StudyError(
            f"archive {path} is truncated or corrupt: {error}; {start_again(source)}."
        ) from error
    return assemble(path, contents, source)


def start_again(source: DatasetSource) -> str:
    """The remedy for an archive that cannot be used."""
    if source.url is None:
        return "delete it so that the workflow generates it again"
    return f"delete it and obtain the official {source.name} archive again"


def check_members_safe(path: Path, members: Iterable[tarfile.TarInfo], source: DatasetSource) -> None:
    for member in members:
        problem = unsafe_member_problem(member)
        if problem:
            raise StudyError(
                f"archive {path} contains an unsafe member {member.name!r} ({problem}); "
                f"{start_again(source)}."
            )


def unsafe_member_problem(member: tarfile.TarInfo) -> str | None:
    name = PurePosixPath(member.name)
    if name.is_absolute():
        return "absolute path"
    if ".." in name.parts:
        return "'..' path component"
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if not (member.isfile() or member.isdir()):
        return "device, fifo or other special file"
    return None


def read_members(
    path: Path, archive: tarfile.TarFile, members: list[tarfile.TarInfo], source: DatasetSource
) -> dict[str, bytes]:
    wanted = (*source.train_members, source.test_member, source.class_names_member)
    by_name = {PurePosixPath(member.name).as_posix(): member for member in members if member.isfile()}
    for name in wanted:
        if name not in by_name:
            raise StudyError(f"archive {path} has no member {name}; {start_again(source)}.")
    # A .tar.gz can only be rewound by decompressing it from the start, so read in archive order.
    in_archive_order = sorted((by_name[name] for name in wanted), key=lambda member: member.offset_data)
    contents = {}
    for member in in_archive_order:
        data = archive.extractfile(member).read()
        if len(data) != member.size:
            raise EOFError(f"member {member.name} ends after {len(data)} of {member.size} bytes")
        contents[PurePosixPath(member.name).as_posix()] = data
    return contents


def assemble(path: Path, contents: dict[str, bytes], source: DatasetSource) -> RawDataset:
    train = [
        parse_records(path, name, contents[name], source, source.records_per_train_member)
        for name in source.train_members
    ]
    test_images, test_labels = parse_records(
        path, source.test_member, contents[source.test_member], source, source.test_records
    )
    return RawDataset(
        train_images=torch.cat([images for images, _ in train]),
        train_labels=torch.cat([labels for _, labels in train]),
        test_images=test_images,
        test_labels=test_labels,
        class_names=parse_class_names(path, contents[source.class_names_member], source),
    )


def parse_records(
    path: Path, member: str, data: bytes, source: DatasetSource, expected_records: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn one binary member into uint8 images [N, 3, 32, 32] and int64 labels [N]."""
    count, remainder = divmod(len(data), source.record_bytes)
    if remainder or count == 0:
        raise StudyError(
            f"member {member} of archive {path} has {len(data)} bytes, not a positive whole number of "
            f"{source.record_bytes}-byte records; {start_again(source)}."
        )
    if expected_records is not None and count != expected_records:
        raise StudyError(
            f"member {member} of archive {path} holds {count} records instead of {expected_records}; "
            f"{start_again(source)}."
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(count, source.record_bytes)
    labels = records[:, source.label_offset].astype(np.int64)
    if labels.max() >= source.num_classes:
        raise StudyError(
            f"member {member} of archive {path} has label {labels.max()} but {source.name} has only "
            f"{source.num_classes} classes; {start_again(source)}."
        )
    images = records[:, source.label_bytes :].copy().reshape(count, *IMAGE_SHAPE)
    return torch.from_numpy(images), torch.from_numpy(labels)


def parse_class_names(path: Path, data: bytes, source: DatasetSource) -> list[str]:
    names = [line.strip() for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if len(names) != source.num_classes:
        raise StudyError(
            f"member {source.class_names_member} of archive {path} lists {len(names)} class names "
            f"instead of {source.num_classes}; {start_again(source)}."
        )
    return names


# --- splitting and preparation ----------------------------------------------------------------------


def split_indices(
    labels: torch.Tensor, validation_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions of ``labels`` into sorted (train, validation) indices, stratified by class.

    Each class gives the floor or ceiling of its exact share so the validation set has exactly
    round(fraction * N) images (largest remainders get the extra ones): 5,000 of 50,000 at 0.1.
    """
    if not 0 <= validation_fraction < 1:
        raise StudyError(f"validation fraction {validation_fraction} must be at least 0 and below 1.")
    classes, counts = torch.unique(labels, return_counts=True)
    quotas = validation_quotas(counts.tolist(), validation_fraction)
    generator = torch.Generator().manual_seed(seed)
    validation = []
    for label, quota in zip(classes.tolist(), quotas, strict=True):
        members = torch.nonzero(labels == label).flatten()
        shuffled = members[torch.randperm(len(members), generator=generator)]
        validation.append(shuffled[:quota])
    validation_indices = torch.sort(torch.cat(validation)).values
    is_train = torch.ones(len(labels), dtype=torch.bool)
    is_train[validation_indices] = False
    return torch.nonzero(is_train).flatten(), validation_indices


def validation_quotas(counts: Sequence[int], fraction: float) -> list[int]:
    shares = [fraction * count for count in counts]
    quotas = [math.floor(share) for share in shares]
    missing = round(fraction * sum(counts)) - sum(quotas)
    by_remainder = sorted(range(len(counts)), key=lambda i: quotas[i] - shares[i])
    for i in by_remainder[:missing]:
        quotas[i] += 1
    return quotas


def channel_mean_std(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation on the [0, 1] scale, accumulated in float64 by chunks so
    50,000 images never need a float copy at once."""
    total = torch.zeros(3, dtype=torch.float64)
    total_squares = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        pixels = images[start : start + chunk].to(torch.float64) / 255
        total += pixels.sum(dim=(0, 2, 3))
        total_squares += pixels.square().sum(dim=(0, 2, 3))
    count = len(images) * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
    mean = total / count
    std = (total_squares / count - mean.square()).clamp_min(0).sqrt()
    return mean.float(), std.float()


def prepare_dataset(
    archive: Path, output: Path, source: DatasetSource, validation_fraction: float, split_seed: int
) -> None:
    """Write the train/validation/test splits and the train-split normalisation statistics to ``output``."""
    raw = read_archive(archive, source)
    train_indices, val_indices = split_indices(raw.train_labels, validation_fraction, split_seed)
    train_images = raw.train_images[train_indices]
    mean, std = channel_mean_std(train_images)
    save_tensors(
        output,
        {
            "train_images": train_images,
            "train_labels": raw.train_labels[train_indices],
            "val_images": raw.train_images[val_indices],
            "val_labels": raw.train_labels[val_indices],
            "test_images": raw.test_images,
            "test_labels": raw.test_labels,
            "mean": mean,
            "std": std,
            "class_names": raw.class_names,
            "num_classes": source.num_classes,
            "dataset": source.name,
            "validation_fraction": float(validation_fraction),
            "split_seed": int(split_seed),
            "archive_md5": file_md5(archive),
        },
    )


# --- loading prepared data --------------------------------------------------------------------------


def load_prepared(path: Path, splits: Sequence[str] = ("train", "val")) -> dict:
    """Load the requested splits (the test set only when asked for) with the normalisation statistics."""
    unknown = [split for split in splits if split not in SPLITS]
    if unknown:
        raise StudyError(
            f"unknown split {unknown[0]!r} requested from {path}; choose from {', '.join(SPLITS)}."
        )
    data = read_prepared_file(Path(path))
    num_classes = data.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise_bad_key(path, "num_classes", "a positive int", describe(num_classes))
    class_names = data.get("class_names")
    if not isinstance(class_names, list) or len(class_names) != num_classes:
        raise_bad_key(path, "class_names", f"a list of {num_classes} names", describe(class_names))
    for key in ("mean", "std"):
        check_tensor(path, key, data.get(key), torch.float32, (3,))
    loaded = {key: data[key] for key in ("mean", "std", "class_names", "num_classes")}
    for split in splits:
        images, labels = data.get(f"{split}_images"), data.get(f"{split}_labels")
        check_tensor(path, f"{split}_images", images, torch.uint8, (None, *IMAGE_SHAPE))
        check_tensor(path, f"{split}_labels", labels, torch.int64, (len(images),))
        if len(labels) and not (labels.min() >= 0 and labels.max() < num_classes):
            found = f"labels from {labels.min().item()} to {labels.max().item()}"
            raise_bad_key(path, f"{split}_labels", f"labels from 0 to {num_classes - 1}", found)
        loaded[f"{split}_images"], loaded[f"{split}_labels"] = images, labels
    return loaded


def read_prepared_file(path: Path) -> dict:
    if not path.is_file():
        raise StudyError(f"prepared dataset {path} does not exist; run the data preparation step first.")
    try:
        data = load_tensors(path)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise StudyError(
            f"prepared dataset {path} cannot be read ({error}); delete it and rerun the data preparation."
        ) from error
    if not isinstance(data, dict):
        raise StudyError(
            f"prepared dataset {path} holds a {type(data).__name__}, not a dict; rerun the preparation."
        )
    return data


def check_tensor(path: Path, key: str, value, dtype: torch.dtype, shape: tuple[int | None, ...]) -> None:
    """Check ``value`` is a tensor of ``dtype`` and ``shape`` (``None`` matches any size)."""
    shape_ok = (
        isinstance(value, torch.Tensor)
        and value.dim() == len(shape)
        and all(want is None or want == have for want, have in zip(shape, value.shape, strict=True))
    )
    if not shape_ok or value.dtype != dtype:
        expected_shape = ", ".join("N" if size is None else str(size) for size in shape)
        raise_bad_key(path, key, f"a {dtype} tensor of shape [{expected_shape}]", describe(value))


def describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}"


def raise_bad_key(path: Path, key: str, expected: str, found: str) -> NoReturn:
    raise StudyError(
        f"prepared dataset {path} has {found} under {key!r}, expected {expected}; "
        "delete it and rerun the data preparation."
    )
