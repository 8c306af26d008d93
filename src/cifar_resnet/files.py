"""Reading and writing the workflow's files. Every write is atomic: a file appears whole or not at all, and a
failed write leaves the previous version intact."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers can infer the format); when the
    block succeeds the file is flushed to disk and renamed over ``path``, when it fails it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}")
    # Created like any new file (0666 less the umask), not 0600 as mkstemp would: outputs stay readable
    # by whoever may read the results folder.
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OSError(error.errno, f"could not write {path}: {error.strerror or error}") from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(text)


def write_json(path: str | os.PathLike, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | os.PathLike, frame) -> None:
    """A pandas DataFrame as CSV, without its index."""
    with atomic_output(path) as temporary:
        frame.to_csv(temporary, index=False)


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


# torch is imported by the two tensor functions only: report jobs use this module and never load torch.
def save_tensors(path: str | os.PathLike, data) -> None:
    """``torch.save`` of tensors and plain containers only, so ``load_tensors`` can refuse anything else."""
    import torch

    with atomic_output(path) as temporary:
        torch.save(data, temporary)


def load_tensors(path: str | os.PathLike, map_location="cpu"):
    import torch

    return torch.load(path, map_location=map_location, weights_only=True)
