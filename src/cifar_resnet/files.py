"""Reading and writing the workflow's files. Every write is atomic: a file appears whole or not at all, and a
failed write leaves the previous version intact."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import secrets
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cifar_resnet.errors import StudyError


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers can infer the format); when the
    block succeeds the file is flushed to disk and renamed over ``path``, when it fails it is removed."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created like any new file (0666 less the umask), not 0600 as mkstemp would: outputs stay
        # readable by whoever may read the results folder.
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except OSError as error:
        _remove(temporary)
        # The path the caller writes, not the temporary's, is what the error names.
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    except BaseException:
        _remove(temporary)
        raise


def _remove(temporary: Path) -> None:
    with contextlib.suppress(OSError):  # a folder made read-only keeps it: nothing more can be done
        temporary.unlink(missing_ok=True)


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


# A workflow output that a later job cannot read is rebuilt by deleting it: every run file is a target.
REBUILD = "delete it and run the same snakemake command again, which rebuilds it"


def unreadable(path: str | os.PathLike, problem: str, remedy: str = REBUILD) -> StudyError:
    """The one sentence for an output a later job cannot read: the file, what is wrong, the remedy."""
    return StudyError(f"{path} {problem}; {remedy}.")


def check_json(path: str | os.PathLike, fields: Sequence[str] = ()) -> dict:
    """The JSON object at ``path``, which must hold ``fields``; FileNotFoundError where there is none."""
    try:
        record = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise unreadable(path, f"is not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise unreadable(path, f"holds a JSON {type(record).__name__}, not an object")
    missing = [field for field in fields if field not in record]
    if missing:
        raise unreadable(path, f"lacks {', '.join(missing)}")
    return record


def check_csv(path: str | os.PathLike, numeric_columns: Sequence[str]) -> str:
    """The text of the CSV file at ``path``, once its header is shown to hold ``numeric_columns`` and
    its every row to be complete, with a number in each of those columns; a reader parses the text
    returned rather than the file again."""
    try:
        with open(path, newline="") as handle:
            text = handle.read()
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except (UnicodeDecodeError, csv.Error) as error:
        raise unreadable(path, f"is not a CSV table ({error})") from None
    header = rows[0] if rows else []
    missing = [column for column in numeric_columns if column not in header]
    if missing:
        raise unreadable(path, f"lacks the columns {', '.join(missing)}")
    if len(rows) == 1:
        raise unreadable(path, "has no rows")
    for line, row in enumerate(rows[1:], start=2):
        try:
            if len(row) != len(header):
                raise ValueError(f"{len(row)} fields, not {len(header)}")
            for column in numeric_columns:
                float(row[header.index(column)])
        except ValueError as error:
            raise unreadable(path, f"has a broken line {line} ({error})") from None
    return text


def check_tensor_file(path: str | os.PathLike, remedy: str = REBUILD) -> None:
    """Whether ``path`` is whole as ``save_tensors`` writes it (a zip archive with its pickle), without
    torch: reading the archive's directory finds a truncated file, and the CRC-32 that torch.save
    records of every member when it writes the file finds changed bytes (docs/benchmark.md has how
    long that takes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise unreadable(path, f"is truncated or not a torch checkpoint ({error})", remedy) from None
    if not any(name.endswith("/data.pkl") for name in names):
        raise unreadable(path, "is not a torch checkpoint (it has no data.pkl)", remedy)
    if damaged is not None:
        raise unreadable(
            path, "is damaged (its bytes no longer match the checksums written with them)", remedy
        )


def sha256(path: str | os.PathLike) -> str:
    """The file's sha256, as ``sha256sum`` prints it."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
