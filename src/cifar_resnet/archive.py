"""Reading a CIFAR binary archive safely: its training and test records and its class names.

The binary archives are read in memory, member by member, and never extracted or unpickled: a record
is one or two label bytes followed by a 32x32 RGB image stored channel by channel, row-major.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from cifar_resnet.errors import StudyError
from cifar_resnet.sources import IMAGE_SHAPE, DatasetSource


@dataclass
class RawDataset:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]


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
