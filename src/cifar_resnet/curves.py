"""A training's live curves for TensorBoard: after each epoch, its history row's losses, errors, learning
rate and images/s, and the epoch the model selection keeps so far; at the start, the run's recipe as
hyperparameters, so that TensorBoard's HParams view compares variants and seeds. Written with
``torch.utils.tensorboard`` into the run's own folder (``layout.TENSORBOARD_DIR``), which is no output of
the workflow and lies outside the run's folder.

TensorBoard is an optional extra: without it a run logs one line saying how to get it and trains the same.
A fresh start empties the folder (a killed run's events would otherwise stand beside the new ones); a
resumed run's writer purges every event from the first epoch it trains again on (``purge_step``), so that
no epoch appears twice.

Each run writes its hyperparameters as a session of its own and no experiment summary: TensorBoard then
builds the HParams table from every run's session, with the columns of all variants (an experiment
summary from one run would limit the table to that run's settings)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

INSTALL = "pip install 'cifar-resnet[tensorboard]'"
# Each epoch's scalars: the tag and its value from the history row.
SCALARS = {
    "loss/train": lambda row: row["train_loss"],
    "loss/val": lambda row: row["val_loss"],
    "error/train": lambda row: 100 * (1 - row["train_accuracy"]),
    "error/val": lambda row: 100 * (1 - row["val_accuracy"]),
    "lr": lambda row: row["lr"],
    "images_per_s": lambda row: row["images_per_s"],
}
SELECTED_EPOCH = "selected/epoch"
SELECTED_ERROR = "selected/val_error"


class Curves:
    """A run's event writer, or nothing where no folder is named or TensorBoard is missing: the training
    calls it the same either way."""

    def __init__(self, writer=None):
        self.writer = writer

    @classmethod
    def open(cls, folder: Path | None, run_config: dict, epochs_done: int, resumed: bool) -> Curves:
        """The writer of the run ``run_config`` into ``folder``: a fresh start's (``resumed`` false) in an
        emptied folder, with the recipe as hyperparameters; a resumed run's after its ``epochs_done``
        epochs, hiding whatever an earlier process wrote for a later epoch."""
        if folder is None:
            return cls()
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError:  # torch.utils.tensorboard imports tensorboard, the extra
            log.info("no TensorBoard curves: TensorBoard is not installed (%s adds it)", INSTALL)
            return cls()
        if not resumed:
            shutil.rmtree(folder, ignore_errors=True)
        writer = SummaryWriter(str(folder), purge_step=epochs_done + 1 if resumed else None)
        if not resumed:
            _, session_start, _ = hparams(recipe_hparams(run_config), {})
            writer.file_writer.add_summary(session_start)
        return cls(writer)

    def epoch(self, row: dict, selected_row: dict) -> None:
        """One epoch's scalars (``row``, history.csv's) at its number, with the epoch the selection keeps
        so far (``selected_row``) and its validation error."""
        if self.writer is None:
            return
        step = row["epoch"]
        for tag, value in SCALARS.items():
            self.writer.add_scalar(tag, value(row), step)
        self.writer.add_scalar(SELECTED_EPOCH, selected_row["epoch"], step)
        self.writer.add_scalar(SELECTED_ERROR, SCALARS["error/val"](selected_row), step)

    def __enter__(self) -> Curves:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        """Flush and close the files; a run that ends without an error is marked done in the HParams
        view, one stopped or failed stays open there until its resumed job finishes it."""
        if self.writer is None:
            return
        if error_type is None:
            from torch.utils.tensorboard.summary import hparams

            _, _, session_end = hparams({}, {})
            self.writer.file_writer.add_summary(session_end)
        self.writer.close()


def recipe_hparams(run_config: dict) -> dict[str, str | int | float]:
    """The run (dataset, variant, depth, seed) and its recipe flattened to dotted names
    (``optimizer.lr``), each a number or a string: lists, None and booleans as text (torch's ``hparams``
    would write a boolean as the number 0 or 1)."""
    flat = {}
    pending = [("", run_config["recipe"])]
    while pending:
        prefix, tree = pending.pop()
        for key, value in tree.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                pending.append((f"{name}.", value))
            else:
                number = isinstance(value, int | float) and not isinstance(value, bool)
                flat[name] = value if number or isinstance(value, str) else str(value)
    run = {key: run_config[key] for key in ("dataset", "variant", "depth", "seed")}
    return run | dict(sorted(flat.items()))
