"""What the benchmark trains: the study's ``paper`` variant and its runtime section, read from the
study's config (config/config.yaml unless told), so that the benchmark times the recipe the training
jobs run and never a copy of its constants.

The config is read with pyyaml and checked against workflow/schemas/config.schema.yaml, whose defaults
are filled in with jsonschema, rather than through ``config.load_study``: that one validates through
Snakemake, which a machine that only benchmarks (such as a bare GPU machine) need not have, whereas
jsonschema is needed anyway (the trainer's ``cifar_resnet.config`` imports it)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from cifar_resnet.config import check_against, load_schema, merge
from cifar_resnet.errors import StudyError

DEFAULT_CONFIG = Path("config/config.yaml")
SCHEMA = Path("workflow/schemas/config.schema.yaml")
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


def load_settings(config_path: str | Path = DEFAULT_CONFIG, schema_path: str | Path = SCHEMA) -> Settings:
    """The ``paper`` variant's recipe and the runtime section of the config at ``config_path``. Raises
    StudyError when the config is missing, invalid or defines no paper variant."""
    config_path, schema_path = Path(config_path), Path(schema_path)
    if not config_path.is_file():
        raise StudyError(f"the study config {config_path} does not exist; name one with --config.")
    if not schema_path.is_file():
        raise StudyError(f"the config schema {schema_path} does not exist; run from the repository's root.")
    config = yaml.safe_load(config_path.read_text())
    schema = load_schema(schema_path)
    check_against(schema, config, str(config_path))
    config = with_defaults(schema, config)
    variant = config["variants"].get(VARIANT)
    if variant is None:
        raise StudyError(f"{config_path} defines no {VARIANT!r} variant, whose recipe the benchmark times.")
    return Settings(recipe=merge(config["recipe"], variant.get("overrides", {})), runtime=config["runtime"])


def with_defaults(schema: dict, instance: dict) -> dict:
    """A copy of ``instance`` (valid against ``schema``) with every default of the schema filled in, as
    Snakemake's ``validate(..., set_default=True)`` does for the workflow."""
    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def fill_then_check(validator, properties, node, subschema):
        if validator.is_type(node, "object"):
            for name, property_schema in properties.items():
                if "default" in property_schema:
                    node.setdefault(name, copy.deepcopy(property_schema["default"]))
        yield from check_properties(validator, properties, node, subschema)

    filling = jsonschema.validators.extend(base, {"properties": fill_then_check})
    filled = copy.deepcopy(instance)
    filling(schema).validate(filled)
    return filled
