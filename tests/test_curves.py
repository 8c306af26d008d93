"""A training's live TensorBoard curves (cifar_resnet.curves), read back with TensorBoard's own reader: each
epoch's scalars are history.csv's, once each after a resume, and a run trains the same with them, without
them and without TensorBoard installed."""

import logging
import sys
import time

import numpy as np
import pytest
import torch
from test_train import StopAfter, run, train

from cifar_resnet import run as run_module
from cifar_resnet.curves import INSTALL, SELECTED_EPOCH, SELECTED_ERROR
from cifar_resnet.files import read_json
from cifar_resnet.records import read_history
from cifar_resnet.workflow import Stopped

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
hparams_metadata = pytest.importorskip("tensorboard.plugins.hparams.metadata")

# The scalars and their values in a history.csv row; TensorBoard keeps them as float32.
FROM_HISTORY = {
    "loss/train": lambda row: row["train_loss"],
    "loss/val": lambda row: row["val_loss"],
    "error/train": lambda row: 100 * (1 - row["train_accuracy"]),
    "error/val": lambda row: 100 * (1 - row["val_accuracy"]),
    "lr": lambda row: row["lr"],
    "images_per_s": lambda row: row["images_per_s"],
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def events(folder):
    accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator, tag) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def float32(value: float) -> float:
    return float(np.float32(value))


def assert_curves_are_the_history(folder, history_file) -> None:
    """Each scalar once per epoch, its value history.csv's (as float32), and the selected epoch."""
    rows = read_history(history_file)
    accumulator = events(folder)
    for tag, value in FROM_HISTORY.items():
        assert scalars(accumulator, tag) == [(int(row["epoch"]), float32(value(row))) for row in rows], tag
    assert [step for step, _ in scalars(accumulator, SELECTED_EPOCH)] == [int(row["epoch"]) for row in rows]
    for (step, epoch), (_, error) in zip(
        scalars(accumulator, SELECTED_EPOCH), scalars(accumulator, SELECTED_ERROR), strict=True
    ):
        assert 1 <= epoch <= step
        assert error == float32(100 * (1 - rows[int(epoch) - 1]["val_accuracy"]))


def test_the_event_files_hold_each_epochs_history_row_and_the_recipe(study, prepared, tmp_path):
    config = run(study, "plateau", unit="epochs", duration=3)  # plateau keeps the best validation epoch
    train(config, prepared, tmp_path, curves=tmp_path / "curves")

    assert_curves_are_the_history(tmp_path / "curves", tmp_path / "history.csv")
    selected_epoch = read_json(tmp_path / "train.json")["selected_epoch"]
    assert scalars(events(tmp_path / "curves"), SELECTED_EPOCH)[-1] == (3, selected_epoch)
    content = events(tmp_path / "curves").PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    assert hparams_metadata.EXPERIMENT_TAG not in content  # TensorBoard builds the table from all runs
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG]
    )
    values = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    assert values["variant"] == "plateau" and values["depth"] == 8 and values["seed"] == 0
    assert values["schedule.kind"] == "plateau" and values["optimizer.lr"] == 0.1
    assert values["model.preact"] == "False" and values["training.selection"] == "best_val_accuracy"
    end = hparams_metadata.parse_session_end_info_plugin_data(content[hparams_metadata.SESSION_END_INFO_TAG])
    assert end.status == 1  # STATUS_SUCCESS


def test_a_run_trains_the_same_with_its_curves_and_without_tensorboard_logs_one_line(
    study, prepared, tmp_path, monkeypatch, caplog
):
    config = run(study, "dropout", unit="epochs", duration=2)  # dropout draws from the generator
    train(config, prepared, tmp_path / "plain")
    train(config, prepared, tmp_path / "watched", curves=tmp_path / "watched" / "curves")
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as where the extra is not installed
    for name in [name for name in sys.modules if name.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    with caplog.at_level(logging.INFO):
        train(config, prepared, tmp_path / "without", curves=tmp_path / "without" / "curves")

    for folder in ("watched", "without"):
        assert (tmp_path / folder / "model.pt").read_bytes() == (tmp_path / "plain" / "model.pt").read_bytes()
        strip = lambda path: [row.split(",")[:7] for row in path.read_text().splitlines()]  # noqa: E731
        assert strip(tmp_path / folder / "history.csv") == strip(tmp_path / "plain" / "history.csv")
    hints = [record.getMessage() for record in caplog.records if "TensorBoard" in record.getMessage()]
    assert hints == [f"no TensorBoard curves: TensorBoard is not installed ({INSTALL} adds it)"]
    assert not (tmp_path / "without" / "curves").exists()


def next_second() -> None:
    """Event files are named by the second they are opened in, and TensorBoard reads a folder's files in
    name order: a resumed process starts seconds later, as the test's must too."""
    time.sleep(1 - time.time() % 1 + 0.01)


def test_a_killed_run_resumed_from_an_earlier_epoch_has_each_epoch_once(
    study, prepared, tmp_path, monkeypatch
):
    """The last resume state is from epoch 1, but the killed process had written epoch 2's curves: the
    resumed process trains epoch 2 again, and TensorBoard shows it once."""
    config = run(study, "plateau", unit="epochs", duration=4)
    curves, resume_file = tmp_path / "curves", tmp_path / "resume.pt"
    saved = []
    save = run_module.save
    monkeypatch.setattr(
        run_module, "save", lambda *args: save(*args) or saved.append(resume_file.read_bytes())
    )
    monkeypatch.setattr(run_module, "stop_request", StopAfter(25))  # mid-way through epoch 3
    with pytest.raises(Stopped):
        train(config, prepared, tmp_path, curves=curves, checkpoint_interval=0)
    assert [step for step, _ in scalars(events(curves), "loss/val")] == [1, 2]
    resume_file.write_bytes(saved[0])  # killed before the saves after epoch 1 reached the disk
    monkeypatch.undo()
    next_second()
    train(config, prepared, tmp_path, curves=curves)

    assert_curves_are_the_history(curves, tmp_path / "history.csv")
    assert len(list(curves.iterdir())) == 2  # the killed process's file and the resumed one's


def test_a_fresh_start_replaces_the_curves_a_killed_run_left(study, prepared, tmp_path, monkeypatch):
    """Killed before its first resume state: the rerun starts afresh, and so do its curves."""
    curves = tmp_path / "curves"
    monkeypatch.setattr(run_module, "stop_request", StopAfter(25))
    with pytest.raises(Stopped):
        train(run(study, "paper", unit="epochs", duration=3), prepared, tmp_path, curves=curves)
    (tmp_path / "resume.pt").unlink()
    monkeypatch.undo()
    next_second()
    train(run(study, "nadam", unit="epochs", duration=3), prepared, tmp_path, curves=curves)

    assert_curves_are_the_history(curves, tmp_path / "history.csv")
    assert len(list(curves.iterdir())) == 1
