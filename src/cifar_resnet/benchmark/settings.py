"""What the benchmark trains: the study's ``paper`` variant and its runtime section, read from the
study's config (config/config.yaml unless told) by the workflow's own loader, so that the benchmark times
the recipe the training jobs run and never a copy of its constants."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cifar_resnet.config import DEFAULT_CONFIG, load_study, read_config_file
from cifar_resnet.errors import StudyError

VARIANT = "paper"


@dataclass(frozen=True)
class Settings:
    recipe: dict  # the paper variant: the study's recipe merged with its overrides, defaults filled in
    runtime: dict  # the study's runtime section, defaults filled in

    @property
    def batch_size(self) -> int:
        return self.recipe["training"]["batch_size"]

    def run_config(self, depth: int, runtime: dict, seed: int, batch_size: int) -> dict:
        """A training job's ``run_config`` (what ``train.build_trainer`` reads) for ResNet-``depth`` with
        ``runtime``, at ``batch_size`` images per step."""
        recipe = {**self.recipe, "training": {**self.recipe["training"], "batch_size": batch_size}}
        return {"variant": VARIANT, "depth": depth, "seed": seed, "recipe": recipe, "runtime": runtime}


def load_settings(config_path: str | Path = DEFAULT_CONFIG) -> Settings:
    """The ``paper`` variant's recipe and the runtime section of the config at ``config_path``. Raises
    StudyError when the config is missing, invalid or defines no paper variant."""
    config_path = Path(config_path)
    if not config_path.is_file():
        raise StudyError(f"the study config {config_path} does not exist; name one with --config.")
    study = load_study(read_config_file(config_path))
    if VARIANT not in study.recipes:
        raise StudyError(f"{config_path} defines no {VARIANT!r} variant, whose recipe the benchmark times.")
    return Settings(recipe=study.recipes[VARIANT], runtime=study.config["runtime"])
