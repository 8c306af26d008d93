"""Learning rate as a function of the iteration; the plateau schedule also follows validation accuracy."""

from __future__ import annotations

import math


class LearningRate:
    """Schedule values given in epochs are converted to iterations once, so ``at`` is a pure function of
    the iteration for every kind but plateau, whose state (``state_dict``) is saved with a checkpoint."""

    def __init__(self, recipe: dict, depth: int, steps_per_epoch: int):
        self.base = recipe["optimizer"]["lr"]
        self.schedule = recipe["schedule"]
        per_unit = steps_per_epoch if recipe["training"]["unit"] == "epochs" else 1
        self.milestones = [m * per_unit for m in self.schedule.get("milestones", [])]
        self.every = self.schedule.get("every", 0) * per_unit
        warmup = recipe.get("warmup")
        self.warmup = warmup if warmup and depth >= warmup["min_depth"] else None
        self.plateau_scale = 1.0
        self.best_val_accuracy = -math.inf
        self.epochs_without_improvement = 0

    def at(self, iteration: int) -> float:
        """The lr for the update that follows ``iteration`` completed updates."""
        if self.warmup and iteration < self.warmup["iterations"]:
            return self.warmup["lr"]
        kind = self.schedule["kind"]
        if kind == "multistep":
            passed = sum(iteration >= m for m in self.milestones)
            return self.base * (self.schedule["factors"][passed - 1] if passed else 1.0)
        if kind == "step":
            return self.base * self.schedule["gamma"] ** (iteration // self.every)
        if kind == "plateau":
            return max(self.base * self.plateau_scale, self.schedule.get("min_lr", 0.0))
        return self.base

    def end_of_epoch(self, val_accuracy: float) -> None:
        if self.schedule["kind"] != "plateau":
            return
        if val_accuracy > self.best_val_accuracy:
            self.best_val_accuracy = val_accuracy
            self.epochs_without_improvement = 0
            return
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement > self.schedule["patience"]:
            self.plateau_scale *= self.schedule["factor"]
            self.epochs_without_improvement = 0

    def state_dict(self) -> dict:
        return {
            "plateau_scale": self.plateau_scale,
            "best_val_accuracy": self.best_val_accuracy,
            "epochs_without_improvement": self.epochs_without_improvement,
        }

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale = state["plateau_scale"]
        self.best_val_accuracy = state["best_val_accuracy"]
        self.epochs_without_improvement = state["epochs_without_improvement"]
