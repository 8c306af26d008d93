"""A running study's progress: each training job's history.csv, written while it trains."""

import csv
import io

from test_train import run, train

from cifar_resnet import run as run_module


def histories_seen_at_each_epoch(study, prepared, folder, monkeypatch, interval):
    """history.csv as it stood when each epoch of a three-epoch run began (None: not yet written)."""
    seen = []
    train_epoch = run_module.train_epoch

    def spying(trainer, epoch, partial):
        path = folder / "history.csv"
        seen.append(list(csv.DictReader(io.StringIO(path.read_text()))) if path.exists() else None)
        return train_epoch(trainer, epoch, partial)

    monkeypatch.setattr(run_module, "train_epoch", spying)
    monkeypatch.setattr(run_module, "PROGRESS_INTERVAL_SECONDS", interval)
    train(run(study, "paper", unit="epochs", duration=3), prepared, folder)
    return seen


def test_the_history_is_written_after_every_epoch_while_the_run_trains(
    study, prepared, tmp_path, monkeypatch
):
    seen = histories_seen_at_each_epoch(study, prepared, tmp_path, monkeypatch, interval=0.0)

    assert seen[0] is None
    assert [[row["epoch"] for row in rows] for rows in seen[1:]] == [["1"], ["1", "2"]]
    assert all(row["epochs"] == "3" and float(row["images_per_s"]) > 0 for row in seen[2])
    assert len(list(csv.DictReader(io.StringIO((tmp_path / "history.csv").read_text())))) == 3
    # every write was atomic: no temporary file is left beside the outputs
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "eval.json",
        "history.csv",
        "model.pt",
        "train.json",
    ]


def test_the_history_waits_for_the_progress_interval_after_the_first_epoch(
    study, prepared, tmp_path, monkeypatch
):
    seen = histories_seen_at_each_epoch(study, prepared, tmp_path, monkeypatch, interval=3600.0)

    assert [[row["epoch"] for row in rows] for rows in seen[1:]] == [["1"], ["1"]]
