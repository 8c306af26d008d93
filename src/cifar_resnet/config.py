"""The study's configuration: read as the workflow reads it, validated against config.schema.yaml (beside
this module) with its defaults filled in, variant overlays merged into the paper's recipe, and the grid of
runs (dataset x variant x depth x seed) the workflow trains. One loader for the workflow, ``status`` and
the benchmark; it needs only pyyaml and jsonschema, which Snakemake's own process has."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
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

    def trained_runs(self) -> list[Run]:
        """Every run the workflow trains: the study's runs, then the pretraining runs they start from."""
        runs = self.runs()
        sources = [self.pretraining_run(run) for run in runs]
        return runs + sorted({source for source in sources if source and source not in runs})

    def compute(self, run: Run) -> int:
        """A run's compute relative to the others': depth times width squared."""
        return run.depth * self.recipes[run.variant]["model"]["width"] ** 2

    def trained_variants(self) -> list[tuple[str, str]]:
        """The (dataset, variant) pairs the workflow trains, at every depth and seed of the study."""
        return list(dict.fromkeys((run.dataset, run.variant) for run in self.trained_runs()))


def config_hash(run_config: dict) -> str:
    return hashlib.sha256(json.dumps(run_config, sort_keys=True).encode()).hexdigest()[:16]


SCHEMA = Path(__file__).with_name("config.schema.yaml")
# The workflow's own configuration file, relative to the folder it runs in (its `configfile:`).
DEFAULT_CONFIG = Path("config/config.yaml")


@functools.cache
def load_schema() -> dict:
    """The configuration's schema, read once per process (every load of a study validates against it)."""
    return yaml.load(SCHEMA.read_text(), Loader=SAFE_LOADER)


def read_study_config(configfiles: Sequence[str | Path] = ()) -> dict:
    """The configuration as the workflow reads it in the working directory: config/config.yaml, where it
    exists, with each of ``configfiles`` (snakemake's ``--configfile``) merged over it in turn."""
    from snakemake.utils import update_config  # the merge Snakemake applies to its config files

    paths = ([DEFAULT_CONFIG] if DEFAULT_CONFIG.is_file() else []) + [Path(path) for path in configfiles]
    if not paths:
        raise StudyError(
            f"There is no {DEFAULT_CONFIG} in {Path.cwd()}: run this from the folder you run snakemake "
            "from, or name the study's configuration files with --configfile."
        )
    config = {}
    for path in paths:
        if not path.is_file():
            raise StudyError(f"The configuration file {path} does not exist.")
        update_config(config, read_config_file(path))
    return config


def load_study(config: dict, command_line: dict | None = None) -> Study:
    """Validate ``config`` in place (filling the schema's defaults), merge every variant into the recipe
    and check what a schema cannot express. Raises StudyError with one sentence on the first problem.

    ``command_line`` holds the values given with ``--config``, which arrive nested as strings: a value
    the schema refuses that came from there is reported as such."""
    schema = load_schema()
    check_against(schema, config, "config", command_line or {})
    fill_defaults(schema, config)
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
        check_recipe(recipe, Origin(name, definition.get("overrides", {})))
        recipes[name] = recipe
    for name, recipe in recipes.items():
        check_pretraining(name, recipe, recipes)
    if config["runtime"]["cuda_graphs"] and not config["runtime"]["compile"]:
        raise StudyError(
            "runtime.cuda_graphs needs runtime.compile: the CUDA graphs come from "
            'torch.compile(mode="reduce-overhead"); set compile: true or cuda_graphs: false.'
        )
    study = Study(config=config, recipes=recipes)
    check_report(study)
    for dataset, variant in study.trained_variants():
        check_training_length(study, dataset, variant)
    check_deploy(study)
    return study


def fill_defaults(schema: dict, instance: dict) -> None:
    """Fill in every default of ``schema`` that ``instance`` (valid against it) leaves out, in place, as
    Snakemake's ``validate(..., set_default=True)`` does."""
    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def fill_then_check(validator, properties, node, subschema):
        if validator.is_type(node, "object"):
            for name, property_schema in properties.items():
                if "default" in property_schema:
                    node.setdefault(name, copy.deepcopy(property_schema["default"]))
        yield from check_properties(validator, properties, node, subschema)

    jsonschema.validators.extend(base, {"properties": fill_then_check})(schema).validate(instance)


# JSON Schema counts 1.0 as an integer; a seed, a depth or a size written 1.0 would then become "seed1.0"
# in a path or a float in a job, so an integer setting must be written as one.
StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda checker, instance: isinstance(instance, int) and not isinstance(instance, bool)
    ),
)


# PyYAML's C parser where it was built with libyaml (the wheels are), several times faster than its pure
# Python one: the workflow, every job and each torch.hub entry read the configuration.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(SAFE_LOADER):
    """YAML's safe loader, except that a mapping giving a key twice is an error, not the last one winning."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_config_file(path: str | Path) -> dict:
    """A YAML configuration file, refused in one sentence where a mapping gives a key twice: YAML loaders,
    Snakemake's among them, keep the last value silently."""
    try:
        return yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)
    except yaml.constructor.ConstructorError as error:
        raise StudyError(
            f"{path}, line {error.problem_mark.line + 1}: {error.problem}; keep one of them."
        ) from None


def check_unique_keys(paths: Iterable[str | Path]) -> None:
    """Refuse a configuration file among ``paths`` that gives a key twice (``read_config_file``)."""
    for path in paths:
        read_config_file(path)


def check_against(schema: dict, instance: dict, what: str, command_line: dict | None = None) -> None:
    error = jsonschema.exceptions.best_match(StrictValidator(schema).iter_errors(instance))
    if error is None:
        return
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
    where = where.removeprefix(".") or "the top level"
    if error.validator == "type" and isinstance(lookup(command_line or {}, error.absolute_path), str):
        raise StudyError(
            f"{where} is {error.instance!r}, a string, because --config passes nested values as text; "
            "give nested values in a YAML file with --configfile (see the README's Configuration)."
        )
    if error.validator == "pattern" and "description" in error.schema:  # a name: say what a name may hold
        raise StudyError(f"{what}: invalid name {error.instance!r} at {where}. {error.schema['description']}")
    raise StudyError(f"{what}: invalid value at {where}: {error.message}.")


def lookup(tree, path: Iterable):
    """The value at ``path`` (keys and list indices) in ``tree``, or None where there is none."""
    for part in path:
        try:
            tree = tree[part]
        except (KeyError, IndexError, TypeError):
            return None
    return tree


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


@dataclass(frozen=True)
class Origin:
    """Where the values of a variant's recipe are set: in its overrides, or inherited from `recipe`.
    Errors name the key the user wrote, not the variant that happens to inherit it."""

    variant: str
    overrides: dict

    def key(self, *path: str) -> str:
        prefix = f"variants.{self.variant}.overrides" if self.sets(path) else "recipe"
        return ".".join((prefix, *path))

    def sets(self, path: tuple[str, ...]) -> bool:
        node = self.overrides
        for depth, part in enumerate(path):
            if not isinstance(node, dict):
                return True  # a value above the key replaced it
            if part not in node:
                return depth > 0 and "kind" in node  # a mapping naming its kind replaces the recipe's
            node = node[part]
        return True


def check_recipe(recipe: dict, origin: Origin) -> None:
    training, schedule = recipe["training"], recipe["schedule"]
    unit, duration = training["unit"], training["duration"]
    length = f"training ends after {duration} {unit} ({origin.key('training', 'duration')})"
    if schedule["kind"] == "multistep":
        milestones, factors = schedule["milestones"], schedule["factors"]
        milestones_key = origin.key("schedule", "milestones")
        if len(milestones) != len(factors):
            raise StudyError(
                f"{milestones_key} has {len(milestones)} milestones but {origin.key('schedule', 'factors')} "
                f"has {len(factors)} factors; give one factor per milestone."
            )
        if milestones != sorted(set(milestones)):
            raise StudyError(f"{milestones_key} is {milestones}; milestones must strictly increase.")
        beyond = [m for m in milestones if m >= duration]
        if beyond:
            raise StudyError(
                f"{milestones_key} has the milestone {beyond[0]}, which lies beyond the end of training: "
                f"{length}; choose milestones below {duration}."
            )
    if schedule["kind"] == "step" and schedule["every"] >= duration:
        raise StudyError(
            f"{origin.key('schedule', 'every')} is {schedule['every']} {unit}, so the lr step never "
            f"happens: {length}; choose a step below {duration}."
        )


def check_report(study: Study) -> None:
    """The report's options name a variant and a depth: each must be one the study runs."""
    report = study.config["report"]
    baseline = report["baseline_variant"]
    if baseline not in study.variants:
        raise StudyError(
            f"report.baseline_variant is {baseline!r}, a variant the study does not run; choose one of "
            f"study.variants ({', '.join(study.variants)})."
        )
    depth = report["plots"]["learning_curve_depth"]
    if depth is not None and depth not in study.depths:
        raise StudyError(
            f"report.plots.learning_curve_depth is {depth}, a depth the study does not run; choose one of "
            f"study.depths ({', '.join(map(str, study.depths))}) or null for the smallest."
        )


def check_latency_batch(batch_size: int, test_images: int, test_split: str) -> None:
    """The latency's batch is drawn from the test split, which must hold as many images."""
    if batch_size > test_images:
        raise StudyError(
            f"deploy.latency.batch_size is {batch_size}, more than the {test_images} images of {test_split}; "
            f"choose at most {test_images}."
        )


def check_deploy(study: Study) -> None:
    """INT8 calibration draws its images from each dataset's training split, and the latency's batch from
    its test split: each must hold as many."""
    deploy = study.config["deploy"]
    if not deploy["enabled"]:
        return
    for dataset in study.datasets:
        test_images = DATASETS[dataset].test_records or study.config["data"]["demo"]["test_size"]
        check_latency_batch(deploy["latency"]["batch_size"], test_images, f"the {dataset} test split")
        sizes = split_sizes(study.config, dataset)
        if deploy["int8"] and deploy["calibration_images"] > sizes.train:
            raise StudyError(
                f"deploy.calibration_images is {deploy['calibration_images']}, more than the {sizes.train} "
                f"images of the {dataset} training split ({sizes.origin} less data.validation_fraction "
                f"{study.config['data']['validation_fraction']}); choose at most {sizes.train}."
            )


@dataclass(frozen=True)
class SplitSizes:
    """The training and validation split of a dataset, as the prepare step will cut it."""

    train: int
    validation: int
    origin: str  # where the training set's size comes from, for messages


def split_sizes(config: dict, dataset: str) -> SplitSizes:
    """Mirrors datasets.split_indices: the validation split has round(fraction * N) images."""
    official = DATASETS[dataset].train_records
    total = official or config["data"]["demo"]["train_size"]
    origin = f"{dataset}'s {total} training images" if official else f"data.demo.train_size {total}"
    fraction = config["data"]["validation_fraction"]
    validation = round(fraction * total)
    if validation == 0:
        raise StudyError(
            f"data.validation_fraction is {fraction}, which leaves no validation images of {origin}; "
            f"choose a fraction above {0.5 / total:g}."
        )
    return SplitSizes(train=total - validation, validation=validation, origin=origin)


def check_training_length(study: Study, dataset: str, variant: str) -> None:
    """The batch against the training split, and the warm-up against the whole training, of a variant
    trained on ``dataset``: both depend on the split sizes, so they are checked per dataset."""
    recipe, training = study.recipes[variant], study.recipes[variant]["training"]
    origin = Origin(variant, study.config["variants"][variant].get("overrides", {}))
    sizes = split_sizes(study.config, dataset)
    batch_size = training["batch_size"]
    if batch_size > sizes.train:
        raise StudyError(
            f"{origin.key('training', 'batch_size')} is {batch_size}, more than the {sizes.train} images of "
            f"the {dataset} training split ({sizes.origin} less data.validation_fraction "
            f"{study.config['data']['validation_fraction']}); choose a batch size of at most {sizes.train}."
        )
    warmup = recipe.get("warmup")
    if not warmup or max(study.depths) < warmup["min_depth"]:
        return
    per_unit = sizes.train // batch_size if training["unit"] == "epochs" else 1
    iterations = training["duration"] * per_unit
    if warmup["iterations"] >= iterations:
        on = f" of {per_unit} steps on {dataset}" if training["unit"] == "epochs" else ""
        raise StudyError(
            f"{origin.key('warmup', 'iterations')} is {warmup['iterations']}, but the whole training of "
            f"variant {variant!r} lasts {iterations} iterations ({origin.key('training', 'duration')}: "
            f"{training['duration']} {training['unit']}{on}); make the warm-up shorter or set "
            f"{origin.key('warmup')} to null."
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
