import errno
import os
import stat

import pandas as pd
import pytest
import torch

from cifar_resnet import files


def test_atomic_output_replaces_the_file_only_when_complete(tmp_path):
    target = tmp_path / "table.md"
    files.write_text(target, "old")
    with pytest.raises(RuntimeError), files.atomic_output(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("crash in the middle of writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]  # no temporary left behind


def test_a_full_disk_is_reported_and_leaves_the_previous_version(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    files.write_json(target, {"version": 1})

    def no_space(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(target), "write_text", no_space)
    with pytest.raises(OSError, match=f"could not write {target}: No space left on device"):
        files.write_json(target, {"version": 2})
    monkeypatch.undo()
    assert files.read_json(target) == {"version": 1}
    assert len(list(tmp_path.iterdir())) == 1


class Payload:
    """Stands for any pickled object a crafted checkpoint could smuggle in."""


def test_tensor_files_load_without_pickled_objects(tmp_path):
    import torch

    files.save_tensors(tmp_path / "ok.pt", {"w": torch.ones(2), "names": ["a", "b"]})
    assert files.load_tensors(tmp_path / "ok.pt")["names"] == ["a", "b"]

    torch.save({"object": Payload()}, tmp_path / "bad.pt")
    with pytest.raises(Exception, match="weights_only"):
        files.load_tensors(tmp_path / "bad.pt")


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
        files.save_tensors(tmp_path / "model.pt", {"weight": torch.zeros(2)})
    finally:
        os.umask(previous)
    assert {stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()} == {mode}
