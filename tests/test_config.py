from pathlib import Path

import pytest
import yaml

from cifar_resnet.config import Run, load_study, merge
from cifar_resnet.errors import StudyError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"


def study_config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def demo_config():
    return merge(study_config(), yaml.safe_load((ROOT / "config" / "demo.yaml").read_text()))


def test_default_config_is_the_full_grid():
    study = load_study(study_config(), SCHEMA)
    assert study.depths == [20, 32, 44, 56, 110]
    assert len(study.variants) >= 12
    assert len(study.runs()) == len(study.variants) * 5 * len(study.seeds)
    assert study.recipes["paper"]["schedule"]["milestones"] == [32000, 48000]


def test_demo_config_validates_and_pretrains_on_the_demo():
    study = load_study(demo_config(), SCHEMA)
    assert study.datasets == ["demo"]
    assert study.pretraining_run(Run("demo", "frozen", 20, 0)) == Run("demo", "paper", 20, 0)
    assert study.pretraining_run(Run("demo", "paper", 20, 0)) is None


def test_timing_config_runs_the_papers_recipe_on_a_cifar10_sized_demo():
    config = merge(study_config(), yaml.safe_load((ROOT / "config" / "timing.yaml").read_text()))
    timing, study = load_study(config, SCHEMA), load_study(study_config(), SCHEMA)
    assert timing.runs() == [Run("demo", "paper", depth, 0) for depth in (20, 32, 44, 56, 110)]
    for depth in timing.depths:
        timed = timing.run_config(Run("demo", "paper", depth, 0))
        real = study.run_config(Run("cifar10", "paper", depth, 0))
        assert timed == real | {"dataset": "demo"}  # the recipe, runtime and split of the real study
    demo = config["data"]["demo"]
    train_split = round(demo["train_size"] * (1 - config["data"]["validation_fraction"]))
    assert (train_split, demo["test_size"]) == (45_000, 10_000)  # CIFAR-10's split: 351 steps per epoch


def test_variant_overrides_merge_into_the_recipe():
    study = load_study(study_config(), SCHEMA)
    projection = study.recipes["projection"]
    assert projection["model"]["shortcut"] == "B"
    assert projection["optimizer"] == study.recipes["paper"]["optimizer"]
    # a schedule naming its kind replaces the recipe's whole: no stray multistep milestones
    assert study.recipes["plateau"]["schedule"] == {
        "kind": "plateau",
        "factor": 0.1,
        "patience": 5,
        "min_lr": 0.0001,
    }


def test_run_config_changes_only_with_its_own_variant():
    base, changed = study_config(), study_config()
    changed["variants"]["nadam"]["overrides"]["optimizer"]["lr"] = 0.002
    before, after = load_study(base, SCHEMA), load_study(changed, SCHEMA)
    for run in before.runs():
        same = before.run_config(run) == after.run_config(run)
        assert same == (run.variant != "nadam")


def mutate(path, value):
    config = study_config()
    *parents, key = path
    node = config
    for part in parents:
        node = node[part]
    if value is KeyError:
        del node[key]
    else:
        node[key] = value
    return config


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("study", "depths"), [20, 21], "depth 21 is not a CIFAR ResNet depth"),
        (("study", "depths"), [], "study.depths: \\[\\] should be non-empty"),
        (("study", "variants"), ["paper", "typo"], "'typo', which is not defined"),
        (("study", "colour"), "red", "'colour' was unexpected"),
        (("variants", "wide", "overrides", "model", "widht"), 4, "variant 'wide'.*'widht' was unexpected"),
        (
            ("recipe", "optimizer", "lr"),
            -0.1,
            "recipe.optimizer.lr: -0.1 is less than or equal to the minimum",
        ),
        (("recipe", "optimizer", "name"), "adamw", "'adamw' is not one of"),
        (("recipe", "schedule", "kind"), "cosine", "'cosine' is not one of"),
        (("recipe", "schedule", "milestones"), [32000, 70000], "milestone 70000 lies beyond the end"),
        (("recipe", "schedule", "factors"), [0.1], "2 milestones but 1 factors"),
        (("recipe", "training", "duration"), "long", "'long' is not of type 'integer'"),
        (
            ("variants", "step-lr", "overrides", "schedule", "gamma"),
            KeyError,
            "'gamma' is a required property",
        ),
        (
            ("variants", "frozen", "overrides", "pretrained", "variant"),
            "nope",
            "pretrained from variant 'nope'",
        ),
        (("variants", "frozen", "overrides", "model"), {"width": 2}, "changes the backbone \\(width\\)"),
        (("report", "baseline_variant"), "nope", "baseline_variant 'nope' is not defined"),
        (
            ("study", "datasets"),
            ["cifar10", "imagenet"],
            "study.datasets has 'imagenet', which is not a dataset it accepts; choose one of cifar10, "
            "cifar100, demo\\.",
        ),
        (
            ("data", "archives"),
            {"demo": "demo.tar.gz"},
            "data.archives has 'demo', which is not a dataset it accepts; choose one of cifar10, cifar100\\.",
        ),
        (
            ("variants", "frozen", "overrides", "pretrained", "dataset"),
            "cifar1000",
            "pretrained.dataset of variant 'frozen' has 'cifar1000', which is not a dataset it accepts",
        ),
    ],
)
def test_config_errors_are_one_clear_sentence(path, value, message):
    with pytest.raises(StudyError, match=message) as error:
        load_study(mutate(path, value), SCHEMA)
    assert "\n" not in str(error.value)


def test_cuda_graphs_need_compile():
    config = study_config()
    config["runtime"].update(compile=False, cuda_graphs=True)
    with pytest.raises(StudyError, match="runtime.cuda_graphs needs runtime.compile"):
        load_study(config, SCHEMA)
    config["runtime"]["compile"] = True
    assert load_study(config, SCHEMA).config["runtime"]["cuda_graphs"] is True


def test_merge_replaces_lists_and_values_and_merges_mappings():
    base = {"a": {"b": 1, "c": [1, 2]}, "s": {"kind": "x", "p": 1}}
    merged = merge(base, {"a": {"c": [3]}, "s": {"kind": "y", "q": 2}})
    assert merged == {"a": {"b": 1, "c": [3]}, "s": {"kind": "y", "q": 2}}
    assert base["a"]["c"] == [1, 2]
