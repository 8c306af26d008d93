"""Model selection and early stopping, on the validation split only: the monitors that watch its
metrics epoch by epoch."""

from __future__ import annotations

import math


class Monitor:
    """Tracks one validation metric: the best value so far and how many epochs since it improved."""

    def __init__(self, metric: str):
        self.metric = metric
        self.best = math.inf
        self.epochs_without_improvement = 0

    def update(self, row: dict) -> bool:
        value = row[self.metric] if self.metric == "val_loss" else -row[self.metric]
        if value < self.best:
            self.best, self.epochs_without_improvement = value, 0
            return True
        self.epochs_without_improvement += 1
        return False


def monitors_of(training: dict) -> dict[str, Monitor]:
    """The monitors the recipe's ``training`` section asks for: "selection" unless the final epoch's
    model is kept, "early_stopping" when it is enabled."""
    monitors = {}
    if training["selection"] != "final":
        monitors["selection"] = Monitor(training["selection"].removeprefix("best_"))
    if training["early_stopping"]:
        monitors["early_stopping"] = Monitor(training["early_stopping"]["monitor"])
    return monitors


def watch(monitors: dict[str, Monitor], row: dict, training: dict) -> tuple[bool, bool]:
    """Feed one epoch's history ``row`` to the monitors; returns whether this epoch's model is the
    selected one so far, and whether training stops early here."""
    selected = "selection" in monitors and monitors["selection"].update(row)
    stopping = monitors.get("early_stopping")
    if stopping is None:
        return selected, False
    stopping.update(row)
    return selected, stopping.epochs_without_improvement >= training["early_stopping"]["patience"]
