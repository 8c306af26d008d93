"""The study's configuration: validation against config/schema.yaml, variant overlays merged into the
paper's recipe, and the grid of runs (dataset x variant x depth x seed) the workflow trains."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from cifar_resnet.errors import StudyError
from cifar_resnet.sources import DATASETS, downloaded_datasets


@dataclass(frozen=True, order=True)
class Run:
    dataset: str
    variant: str
    depth: int
    seed: int


@dataclass(frozen=True)
class Study:
    config: dict
    recipes: dict[str, dict]

    @property
    def datasets(self) -> list[str]:
        return self.config["study"]["datasets"]

    @property
    def depths(self) -> list[int]:
        return self.config["study"]["depths"]

    @property
    def seeds(self) -> list[int]:
        return self.config["study"]["seeds"]

    @property
    def variants(self) -> list[str]:
        return self.config["study"]["variants"]

    def runs(self, dataset: str | None = None) -> list[Run]:
        datasets = [dataset] if dataset else self.datasets
        return [
            Run(d, v, depth, seed)
            for d in datasets
            for v in self.variants
            for depth in self.depths
            for seed in self.seeds
        ]

    def run_config(self, run: Run) -> dict:
        """Everything that determines a run's result; a change to it retrains exactly that run."""
        return {
            "dataset": run.dataset,
            "variant": run.variant,
            "depth": run.depth,
            "seed": run.seed,
            "recipe": self.recipes[run.variant],
            "runtime": self.config["runtime"],
            "data": {key: self.config["data"][key] for key in ("validation_fraction", "split_seed")},
        }

    def pretraining_run(self, run: Run) -> Run | None:
        pretrained = self.recipes[run.variant].get("pretrained")
        if not pretrained:
            return None
        return Run(pretrained["dataset"], pretrained["variant"], run.depth, run.seed)


def config_hash(run_config: dict) -> str:
    return hashlib.sha256(json.dumps(run_config, sort_keys=True).encode()).hexdigest()[:16]


def load_schema(schema_path: str | Path) -> dict:
    return yaml.safe_load(Path(schema_path).read_text())


def load_study(config: dict, schema_path: str | Path) -> Study:
    """Validate ``config`` in place (filling the schema's defaults), merge every variant into the recipe
    and check what a schema cannot express. Raises StudyError with one sentence on the first problem."""
    from snakemake.utils import validate  # imported here: the rest of the package does not need Snakemake

    schema = load_schema(schema_path)
    check_against(schema, config, "config")
    validate(config, str(schema_path), set_default=True)
    for depth in config["study"]["depths"]:
        check_depth(depth)
    for name in config["study"]["datasets"]:
        check_dataset("study.datasets", name, DATASETS)
    for name in config["data"]["archives"]:
        check_dataset("data.archives", name, downloaded_datasets())
    recipe_schema = {"$defs": schema["$defs"], **schema["$defs"]["recipe"]}
    definitions = config["variants"]
    unknown = [name for name in config["study"]["variants"] if name not in definitions]
    if unknown:
        raise StudyError(
            f"study.variants names {', '.join(map(repr, unknown))}, which is not defined under `variants` "
            f"(defined: {', '.join(sorted(definitions))})."
        )
    recipes = {}
    for name, definition in definitions.items():
        recipe = merge(config["recipe"], definition.get("overrides", {}))
        check_against(recipe_schema, recipe, f"variant {name!r} (recipe merged with its overrides)")
        check_recipe(name, recipe)
        recipes[name] = recipe
    for name, recipe in recipes.items():
        check_pretraining(name, recipe, recipes)
    if config["runtime"]["cuda_graphs"] and not config["runtime"]["compile"]:
        raise StudyError(
            "runtime.cuda_graphs needs runtime.compile: the CUDA graphs come from "
            'torch.compile(mode="reduce-overhead"); set compile: true or cuda_graphs: false.'
        )
    baseline = config["report"]["baseline_variant"]
    if baseline not in definitions:
        raise StudyError(f"report.baseline_variant {baseline!r} is not defined under `variants`.")
    return Study(config=config, recipes=recipes)


def check_against(schema: dict, instance: dict, what: str) -> None:
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(instance))
    if error is not None:
        where = ".".join(str(part) for part in error.absolute_path) or "the top level"
        raise StudyError(f"{what}: invalid value at {where}: {error.message}.")


def check_depth(depth: int) -> None:
    if depth < 8 or (depth - 2) % 6:
        raise StudyError(
            f"depth {depth} is not a CIFAR ResNet depth: it must be 6n+2 (20, 32, 44, 56, 110, 1202, ...)."
        )


def check_dataset(key: str, name: str, valid: Iterable[str]) -> None:
    """Dataset names are checked here, not by the schema: src/cifar_resnet/sources.py declares them."""
    if name not in valid:
        raise StudyError(
            f"{key} has {name!r}, which is not a dataset it accepts; choose one of {', '.join(valid)}."
        )


def merge(base: dict, overrides: dict) -> dict:
    """Deep merge: nested mappings merge key by key, anything else (lists, scalars, null) replaces. A
    mapping that names its own ``kind`` (a schedule) replaces the base mapping: other kinds' keys do not
    carry over."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and "kind" not in value:
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def check_recipe(name: str, recipe: dict) -> None:
    training, schedule = recipe["training"], recipe["schedule"]
    unit, duration = training["unit"], training["duration"]
    if schedule["kind"] == "multistep":
        milestones, factors = schedule["milestones"], schedule["factors"]
        if len(milestones) != len(factors):
            raise StudyError(
                f"variant {name!r}: schedule has {len(milestones)} milestones but {len(factors)} factors; "
                "give one factor per milestone."
            )
        if milestones != sorted(set(milestones)):
            raise StudyError(f"variant {name!r}: schedule milestones {milestones} must strictly increase.")
        beyond = [m for m in milestones if m >= duration]
        if beyond:
            raise StudyError(
                f"variant {name!r}: schedule milestone {beyond[0]} lies beyond the end of training "
                f"({duration} {unit})."
            )
    if schedule["kind"] == "step" and schedule["every"] >= duration:
        raise StudyError(
            f"variant {name!r}: the lr step every {schedule['every']} {unit} never happens in "
            f"{duration} {unit} of training."
        )


BACKBONE_OPTIONS = ("shortcut", "preact", "width")


def check_pretraining(name: str, recipe: dict, recipes: dict[str, dict]) -> None:
    pretrained = recipe.get("pretrained")
    if not pretrained:
        return
    check_dataset(f"pretrained.dataset of variant {name!r}", pretrained["dataset"], DATASETS)
    source = pretrained["variant"]
    if source not in recipes:
        raise StudyError(f"variant {name!r} is pretrained from variant {source!r}, which is not defined.")
    if recipes[source].get("pretrained"):
        raise StudyError(
            f"variant {name!r} is pretrained from {source!r}, which is itself pretrained; "
            "pretrain from a variant trained from scratch."
        )
    mismatched = [o for o in BACKBONE_OPTIONS if recipe["model"][o] != recipes[source]["model"][o]]
    if mismatched:
        raise StudyError(
            f"variant {name!r} changes the backbone ({', '.join(mismatched)}) of the variant {source!r} "
            "it is pretrained from; the pretrained weights would not fit."
        )
