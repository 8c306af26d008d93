import csv
import errno
import os
import re
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from cifar_resnet import files, tensors
from cifar_resnet.errors import StudyError
from cifar_resnet.files import check_csv, check_json, check_tensor_file
from cifar_resnet.plots import plot_confusion_matrix
from cifar_resnet.records import HISTORY_COLUMNS, write_history
from cifar_resnet.tensors import load_checkpoint, save_tensors


def test_atomic_output_replaces_the_file_only_when_complete(tmp_path):
    target = tmp_path / "table.md"
    files.write_text(target, "old")
    with pytest.raises(RuntimeError), files.atomic_output(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("crash in the middle of writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]  # no temporary left behind


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def write_history_rows(path, version):
    write_history(path, [dict.fromkeys(HISTORY_COLUMNS, version)])


def plot_matrix(path, version):
    plot_confusion_matrix([[version, 0], [0, 1]], ["a", "b"], path, "confusion")


# name: (file name, writer(path, version), the call that fails part-way as (owner, attribute))
WRITERS = {
    "text": ("block.md", lambda path, v: files.write_text(path, f"v{v}"), (Path, "write_text")),
    "json": ("train.json", lambda path, v: files.write_json(path, {"v": v}), (Path, "write_text")),
    "tensors": (
        "model.pt",
        lambda path, v: tensors.save_tensors(path, {"w": torch.full((2,), v)}),
        (torch, "save"),
    ),
    "csv": (
        "summary.csv",
        lambda path, v: files.write_csv(path, pd.DataFrame({"v": [v]})),
        (pd.DataFrame, "to_csv"),
    ),
    "history": ("history.csv", write_history_rows, (csv.DictWriter, "writerows")),
    "plot": ("matrix.png", plot_matrix, (Figure, "savefig")),
}


def partial_writer(owner, name):
    if owner is csv.DictWriter:  # writes rows into the open temporary file, then fails

        def partial(self, rows):
            self.writerow(rows[0])
            raise OSError(errno.ENOSPC, "No space left on device")

        return partial
    if owner is torch or owner is Path:

        def partial(first, *args, **kwargs):
            target = args[0] if owner is torch else first
            if hasattr(target, "write"):  # torch.save into an open file
                target.write(b"half a file")
            else:
                Path(target).write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device")

        return partial

    def partial(self, path, *args, **kwargs):  # DataFrame.to_csv, Figure.savefig
        Path(path).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    return partial


@pytest.mark.parametrize("fault", ["part-way", "fsync", "replace"])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_full_disk_is_reported_and_leaves_the_previous_version(tmp_path, monkeypatch, writer, fault):
    name, write, (owner, attribute) = WRITERS[writer]
    target = tmp_path / name
    write(target, 1)
    previous = target.read_bytes()
    if fault == "part-way":
        monkeypatch.setattr(owner, attribute, partial_writer(owner, attribute))
    else:
        monkeypatch.setattr(os, "fsync" if fault == "fsync" else "replace", no_space)
    with pytest.raises(OSError, match="No space left on device") as raised:
        write(target, 2)
    assert raised.value.filename == str(target)  # the file the caller writes, not the temporary
    monkeypatch.undo()
    assert target.read_bytes() == previous
    assert [entry.name for entry in tmp_path.iterdir()] == [name]  # no temporary left behind


class Payload:
    """Stands for any pickled object a crafted checkpoint could smuggle in."""


def test_tensor_files_load_without_pickled_objects(tmp_path):
    import torch

    tensors.save_tensors(tmp_path / "ok.pt", {"w": torch.ones(2), "names": ["a", "b"]})
    assert tensors.load_tensors(tmp_path / "ok.pt")["names"] == ["a", "b"]

    torch.save({"object": Payload()}, tmp_path / "bad.pt")
    with pytest.raises(Exception, match="weights_only"):
        tensors.load_tensors(tmp_path / "bad.pt")


def test_write_csv_round_trips_without_the_index(tmp_path):
    frame = pd.DataFrame({"depth": [20, 56], "error": [8.4, float("nan")], "note": ["", "n/a"]}, index=[7, 9])
    path = tmp_path / "tables/summary.csv"
    files.write_csv(path, frame)
    read = pd.read_csv(path, keep_default_na=False, na_values=[""])
    pd.testing.assert_frame_equal(read, frame.reset_index(drop=True).replace("", float("nan")))
    assert [entry.name for entry in path.parent.iterdir()] == ["summary.csv"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o007, 0o660)])
def test_outputs_get_the_permissions_of_any_new_file(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        files.write_json(tmp_path / "train.json", {"epochs": 1})
        tensors.save_tensors(tmp_path / "model.pt", {"weight": torch.zeros(2)})
    finally:
        os.umask(previous)
    assert {stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()} == {mode}


REBUILD = "delete it and run the same snakemake command again, which rebuilds it."


def test_a_truncated_checkpoint_is_named_in_one_sentence(tmp_path):
    path = tmp_path / "model.pt"
    save_tensors(path, {"weight": torch.zeros(1000)})
    assert load_checkpoint(path)["weight"].shape == (1000,)
    check_tensor_file(path)
    path.write_bytes(path.read_bytes()[:2000])
    for read in (check_tensor_file, load_checkpoint):
        with pytest.raises(StudyError) as error:
            read(path)
        assert str(error.value).startswith(f"{path} is truncated or not a torch checkpoint")
        assert str(error.value).endswith(REBUILD) and "\n" not in str(error.value)


def test_a_checkpoint_with_changed_bytes_is_named_by_its_checksum(tmp_path):
    path = tmp_path / "prepared.pt"
    save_tensors(path, {"images": torch.arange(200_000, dtype=torch.int32)})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04  # one bit inside the tensor's bytes, which torch itself would load
    path.write_bytes(data)
    for read in (check_tensor_file, load_checkpoint):
        with pytest.raises(StudyError) as error:
            read(path)
        assert str(error.value).startswith(f"{path} is damaged (its bytes no longer match the checksums")
        assert str(error.value).endswith(REBUILD)
    with pytest.raises(StudyError, match=r"written with them\); do this\.$"):
        check_tensor_file(path, "do this")


def test_a_broken_json_file_is_named_in_one_sentence(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('{"config": {}, "seed": 0}')
    assert check_json(path, ("config", "seed")) == {"config": {}, "seed": 0}
    for text, problem in [
        ('{"config": {', "is not valid JSON"),
        ("[1, 2]", "holds a JSON list, not an object"),
        ('{"seed": 0}', "lacks config"),
    ]:
        path.write_text(text)
        with pytest.raises(StudyError, match=f"^{re.escape(str(path))} {problem}.*{re.escape(REBUILD)}$"):
            check_json(path, ("config", "seed"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("epoch,val_accuracy\n1,0.5\n", "lacks the columns train_accuracy"),
        ("epoch,train_accuracy,val_accuracy\n", "has no rows"),
        ("epoch,train_accuracy,val_accuracy\n1,0.5,0.4\n2,0.6\n", "has a broken line 3"),
        ("epoch,train_accuracy,val_accuracy\n1,0.5,oops\n", "has a broken line 2"),
    ],
)
def test_a_broken_csv_file_is_named_in_one_sentence(tmp_path, text, problem):
    path = tmp_path / "history.csv"
    path.write_text("epoch,train_accuracy,val_accuracy,lr\n1,0.5,0.4,0.1\n")
    check_csv(path, ("epoch", "train_accuracy", "val_accuracy"))
    path.write_text(text)
    with pytest.raises(StudyError, match=f"^{re.escape(str(path))} {problem}.*{re.escape(REBUILD)}$"):
        check_csv(path, ("epoch", "train_accuracy", "val_accuracy"))
