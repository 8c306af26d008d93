"""The study's datasets, declared once: where each comes from, how its archive is laid out, and what
the report compares it with. The workflow derives its dataset names (wildcard constraints, the
downloaded datasets, the config check) from ``DATASETS``.

Imports nothing heavy: the Snakemake main process reads it for every command, dry runs included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from cifar_resnet.errors import StudyError

# How the README and the hub's entries name each dataset.
DATASET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "demo": "Demo dataset"}

IMAGE_SHAPE = (3, 32, 32)
IMAGE_BYTES = math.prod(IMAGE_SHAPE)


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from and how its archive is laid out.

    ``url`` is ``None`` for a dataset the workflow generates instead of downloading. ``paper_reference``
    says whether the paper's Table 6 (CIFAR-10 test errors) is drawn next to the study's results.
    ``None`` as a record count accepts any number of records, which the locally generated demo set
    and tests use.
    """

    name: str
    url: str | None
    md5: str | None
    archive_name: str
    num_classes: int
    paper_reference: bool
    train_members: tuple[str, ...]
    test_member: str
    class_names_member: str
    label_bytes: int
    label_offset: int
    records_per_train_member: int | None
    test_records: int | None

    @property
    def downloaded(self) -> bool:
        """Whether the workflow downloads the official archive (otherwise it generates one)."""
        return self.url is not None

    @property
    def record_bytes(self) -> int:
        return self.label_bytes + IMAGE_BYTES

    @property
    def train_records(self) -> int | None:
        """The official training set's size (train and validation together); None when any is accepted."""
        if self.records_per_train_member is None:
            return None
        return self.records_per_train_member * len(self.train_members)


CIFAR10 = DatasetSource(
    name="cifar10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    md5="c32a1d4ab5d03f1284b67883e8d87530",
    archive_name="cifar-10-binary.tar.gz",
    num_classes=10,
    paper_reference=True,
    train_members=tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)),
    test_member="cifar-10-batches-bin/test_batch.bin",
    class_names_member="cifar-10-batches-bin/batches.meta.txt",
    label_bytes=1,
    label_offset=0,
    records_per_train_member=10_000,
    test_records=10_000,
)

CIFAR100 = DatasetSource(
    name="cifar100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    md5="03b5dce01913d631647c71ecec9e9cb8",
    archive_name="cifar-100-binary.tar.gz",
    num_classes=100,
    paper_reference=False,
    train_members=("cifar-100-binary/train.bin",),
    test_member="cifar-100-binary/test.bin",
    class_names_member="cifar-100-binary/fine_label_names.txt",
    label_bytes=2,
    label_offset=1,  # the fine label follows the coarse one
    records_per_train_member=50_000,
    test_records=10_000,
)

# Generated locally by cifar_resnet.demo in the CIFAR-10 layout, with any number of records.
DEMO = replace(
    CIFAR10,
    name="demo",
    url=None,
    md5=None,
    archive_name="demo.tar.gz",
    paper_reference=False,
    records_per_train_member=None,
    test_records=None,
)

DATASETS: dict[str, DatasetSource] = {source.name: source for source in (CIFAR10, CIFAR100, DEMO)}


def get_source(name: str) -> DatasetSource:
    if name not in DATASETS:
        raise StudyError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}.")
    return DATASETS[name]


def downloaded_datasets() -> list[str]:
    """The datasets whose official archives the workflow downloads, in declaration order."""
    return [name for name, source in DATASETS.items() if source.downloaded]
