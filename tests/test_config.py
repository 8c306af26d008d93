import re
from pathlib import Path

import pytest
import yaml

from cifar_resnet.config import Run, check_unique_keys, load_study, merge, read_study_config
from cifar_resnet.errors import StudyError

ROOT = Path(__file__).resolve().parents[1]


def study_config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def demo_config():
    return merge(study_config(), yaml.safe_load((ROOT / "config" / "demo.yaml").read_text()))


def test_default_config_is_the_full_grid():
    study = load_study(study_config())
    assert study.depths == [20, 32, 44, 56, 110]
    assert len(study.variants) >= 12
    assert len(study.runs()) == len(study.variants) * 5 * len(study.seeds)
    assert study.recipes["paper"]["schedule"]["milestones"] == [32000, 48000]


def test_demo_config_validates_and_pretrains_on_the_demo():
    study = load_study(demo_config())
    assert study.datasets == ["demo"]
    assert study.pretraining_run(Run("demo", "frozen", 20, 0)) == Run("demo", "paper", 20, 0)
    assert study.pretraining_run(Run("demo", "paper", 20, 0)) is None


def test_timing_config_runs_the_papers_recipe_on_a_cifar10_sized_demo():
    config = merge(study_config(), yaml.safe_load((ROOT / "config" / "timing.yaml").read_text()))
    timing, study = load_study(config), load_study(study_config())
    assert timing.runs() == [Run("demo", "paper", depth, 0) for depth in (20, 32, 44, 56, 110)]
    for depth in timing.depths:
        timed = timing.run_config(Run("demo", "paper", depth, 0))
        real = study.run_config(Run("cifar10", "paper", depth, 0))
        assert timed == real | {"dataset": "demo"}  # the recipe, runtime and split of the real study
    demo = config["data"]["demo"]
    train_split = round(demo["train_size"] * (1 - config["data"]["validation_fraction"]))
    assert (train_split, demo["test_size"]) == (45_000, 10_000)  # CIFAR-10's split: 351 steps per epoch


def test_variant_overrides_merge_into_the_recipe():
    study = load_study(study_config())
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
    before, after = load_study(base), load_study(changed)
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
        (
            ("recipe", "schedule", "milestones"),
            [32000, 70000],
            "^recipe.schedule.milestones has the milestone 70000, which lies beyond the end of training: "
            "training ends after 64000 iterations \\(recipe.training.duration\\); choose milestones below",
        ),
        (
            ("recipe", "schedule", "factors"),
            [0.1],
            "^recipe.schedule.milestones has 2 milestones but recipe.schedule.factors has 1 factors",
        ),
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
        (("report", "baseline_variant"), "nope", "report.baseline_variant is 'nope', a variant the study"),
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
        load_study(mutate(path, value))
    assert "\n" not in str(error.value)


def test_cuda_graphs_need_compile():
    config = study_config()
    config["runtime"].update(compile=False, cuda_graphs=True)
    with pytest.raises(StudyError, match="runtime.cuda_graphs needs runtime.compile"):
        load_study(config)
    config["runtime"]["compile"] = True
    assert load_study(config).config["runtime"]["cuda_graphs"] is True


def test_merge_replaces_lists_and_values_and_merges_mappings():
    base = {"a": {"b": 1, "c": [1, 2]}, "s": {"kind": "x", "p": 1}}
    merged = merge(base, {"a": {"c": [3]}, "s": {"kind": "y", "q": 2}})
    assert merged == {"a": {"b": 1, "c": [3]}, "s": {"kind": "y", "q": 2}}
    assert base["a"]["c"] == [1, 2]


def with_changes(config: dict, *changes: tuple[tuple[str, ...], object]) -> dict:
    for path, value in changes:
        *parents, key = path
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = value
    return config


def refusal(config: dict, command_line: dict | None = None) -> str:
    with pytest.raises(StudyError) as error:
        load_study(config, command_line)
    message = str(error.value)
    assert "\n" not in message and message.endswith(".")
    return message


TRAINING = ("recipe", "training")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # a milestone the recipe sets is the recipe's error, whichever variant inherits it first
        (
            [(("variants", "nadam", "overrides", "training"), {"duration": 40000})],
            "recipe.schedule.milestones has the milestone 48000, which lies beyond the end of training: "
            "training ends after 40000 iterations (variants.nadam.overrides.training.duration); "
            "choose milestones below 40000.",
        ),
        (
            [(("variants", "smooth-lr", "overrides", "schedule", "milestones"), [20000, 32000, 64000])],
            "variants.smooth-lr.overrides.schedule.milestones has the milestone 64000, which lies beyond",
        ),
        (
            [(("variants", "step-lr", "overrides", "schedule", "every"), 250)],
            "variants.step-lr.overrides.schedule.every is 250 epochs, so the lr step never happens: "
            "training ends after 250 epochs (variants.step-lr.overrides.training.duration)",
        ),
        (
            [(("recipe", "warmup", "iterations"), 64000)],
            "recipe.warmup.iterations is 64000, but the whole training of variant 'paper' lasts 64000 "
            "iterations (recipe.training.duration: 64000 iterations); make the warm-up shorter or set "
            "recipe.warmup to null.",
        ),
        # in epochs, the training length depends on the split: 45,000 images in 351 batches of 128
        (
            [(("recipe", "warmup", "iterations"), 11000)],
            "recipe.warmup.iterations is 11000, but the whole training of variant 'frozen' lasts 10530 "
            "iterations (variants.frozen.overrides.training.duration: 30 epochs of 351 steps on cifar10)",
        ),
        (
            [((*TRAINING, "batch_size"), 45001)],
            "recipe.training.batch_size is 45001, more than the 45000 images of the cifar10 training split "
            "(cifar10's 50000 training images less data.validation_fraction 0.1); choose a batch size of at "
            "most 45000.",
        ),
        (
            [(("variants", "wide", "overrides", "training"), {"batch_size": 50000})],
            "variants.wide.overrides.training.batch_size is 50000, more than the 45000 images",
        ),
        (
            [(("report", "baseline_variant"), "wide"), (("study", "variants"), ["paper", "dropout"])],
            "report.baseline_variant is 'wide', a variant the study does not run; choose one of "
            "study.variants (paper, dropout).",
        ),
        (
            [(("report", "plots"), {"learning_curve_depth": 1202})],
            "report.plots.learning_curve_depth is 1202, a depth the study does not run; choose one of "
            "study.depths (20, 32, 44, 56, 110) or null for the smallest.",
        ),
    ],
)
def test_values_that_fail_only_in_a_job_are_refused_when_the_study_loads(changes, message):
    assert message in refusal(with_changes(study_config(), *changes))


def test_the_demo_split_is_checked_with_the_configured_sizes():
    small = with_changes(
        demo_config(),
        (("data", "demo", "train_size"), 140),
        ((*TRAINING, "batch_size"), 128),
        (("deploy", "calibration_images"), 100),
    )
    assert refusal(small) == (
        "recipe.training.batch_size is 128, more than the 126 images of the demo training split "
        "(data.demo.train_size 140 less data.validation_fraction 0.1); choose a batch size of at most 126."
    )
    with_changes(small, ((*TRAINING, "batch_size"), 126))
    assert load_study(small).recipes["paper"]["training"]["batch_size"] == 126
    no_validation = with_changes(small, (("data", "validation_fraction"), 0.003))
    assert refusal(no_validation) == (
        "data.validation_fraction is 0.003, which leaves no validation images of data.demo.train_size 140; "
        "choose a fraction above 0.00357143."
    )


def test_a_warmup_is_checked_only_where_a_depth_uses_it():
    config = with_changes(study_config(), (("recipe", "warmup", "iterations"), 70000))
    assert "recipe.warmup.iterations is 70000" in refusal(config)
    config = with_changes(
        study_config(), (("recipe", "warmup", "iterations"), 70000), (("study", "depths"), [56])
    )
    assert load_study(config).depths == [56]  # the warm-up starts at ResNet-110


def test_a_depth_the_study_runs_is_a_valid_learning_curve_depth():
    config = with_changes(demo_config(), (("report", "plots"), {"learning_curve_depth": 20}))
    assert load_study(config).config["report"]["plots"]["learning_curve_depth"] == 20


def test_a_string_from_the_command_line_is_said_to_be_one():
    # `--config 'study={depths: [20, 32]}'` gives strings: Snakemake reads nested values as YAML text
    command_line = {"study": {"depths": ["20", "32"]}}
    config = merge(study_config(), command_line)
    assert refusal(config, command_line) == (
        "study.depths[1] is '32', a string, because --config passes nested values as text; give nested "
        "values in a YAML file with --configfile (see the README's Configuration)."
    )
    # the same value from a config file is the user's own: the schema's message
    assert "study.depths[1]: '32' is not of type 'integer'" in refusal(config)


def test_runs_of_one_dataset_are_that_datasets_only():
    config = with_changes(study_config(), (("study", "datasets"), ["cifar10", "cifar100"]))
    study = load_study(config)
    assert {run.dataset for run in study.runs("cifar100")} == {"cifar100"}
    assert len(study.runs()) == 2 * len(study.runs("cifar10"))


def test_merged_recipes_share_nothing_with_the_recipe_or_each_other():
    base = {"model": {"width": 1}, "schedule": {"milestones": [1, 2]}}
    merged = merge(base, {"model": {"shortcut": "B"}})
    merged["model"]["width"] = 4
    merged["schedule"]["milestones"].append(3)
    assert base == {"model": {"width": 1}, "schedule": {"milestones": [1, 2]}}
    study = load_study(study_config())
    study.recipes["paper"]["optimizer"]["lr"] = 1.0
    assert study.recipes["dropout"]["optimizer"]["lr"] == 0.1


def test_the_schemas_defaults_fill_what_the_config_leaves_out():
    config = study_config()
    assert "eval_batch_size" not in config["runtime"]  # config.yaml leaves it to the schema
    assert load_study(config).config["runtime"]["eval_batch_size"] == 1000


def test_a_recipe_of_only_the_required_keys_gets_every_optional_one_from_the_schema():
    """The training reads every recipe key: one a config may leave out must come with a default, or the
    job would fail with a KeyError after the checks passed. The test case gives only the required keys."""
    config = yaml.safe_load((ROOT / ".test" / "config" / "config.yaml").read_text())
    assert "warmup" not in config["recipe"] and "pretrained" not in config["recipe"]
    study = load_study(config)
    recipe = study.recipes["paper"]
    assert recipe["warmup"] is None and recipe["pretrained"] is None
    assert recipe["training"]["early_stopping"] is None and recipe["training"]["selection"] == "final"
    assert recipe["model"] == {**study.recipes["projection"]["model"], "shortcut": "A"}


def test_study_config_reads_config_yaml_then_each_configfile_over_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudyError, match=r"There is no config/config.yaml in .*--configfile"):
        read_study_config()
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("study: {depths: [20], seeds: [0]}\ndata: {root: a}\n")
    (tmp_path / "over.yaml").write_text("study: {seeds: [1, 2]}\n")
    config = read_study_config(["over.yaml"])
    assert config == {"study": {"depths": [20], "seeds": [1, 2]}, "data": {"root": "a"}}
    with pytest.raises(StudyError, match="The configuration file missing.yaml does not exist"):
        read_study_config(["missing.yaml"])


def test_a_variant_cannot_pretrain_from_a_pretrained_variant():
    config = with_changes(
        study_config(), (("variants", "finetune", "overrides", "pretrained", "variant"), "frozen")
    )
    assert "which is itself pretrained" in refusal(config)


def test_a_milestone_at_the_end_of_training_is_refused():
    config = with_changes(study_config(), (("recipe", "schedule", "milestones"), [32000, 64000]))
    assert refusal(config).startswith("recipe.schedule.milestones has the milestone 64000, which lies beyond")


def test_resnet_8_is_a_depth_of_the_study():
    config = with_changes(study_config(), (("study", "depths"), [8]))
    assert load_study(config).depths == [8]


def test_deploy_is_on_by_default_with_its_schema_defaults():
    config = study_config()
    del config["deploy"]
    deploy = load_study(config).config["deploy"]
    assert deploy["enabled"] and deploy["int8"]
    assert deploy["tolerance"] == {"max_relative_logit_difference": 0.0001, "min_top1_agreement": 0.999}
    assert deploy["latency"]["batch_threads"] == 4  # a number: never the submitting host's cores


def test_more_calibration_images_than_the_training_split_are_refused():
    config = demo_config()
    config["deploy"]["calibration_images"] = 721  # the demo's 800 images less 80 for validation
    with pytest.raises(StudyError, match=r"deploy.calibration_images is 721, .* 720 images of the demo"):
        load_study(config)
    config["deploy"]["int8"] = False
    load_study(config)


def test_a_latency_batch_larger_than_the_test_split_is_refused():
    config = demo_config()
    config["data"]["demo"]["test_size"] = 100
    config["deploy"]["latency"]["batch_size"] = 101
    with pytest.raises(
        StudyError, match=r"batch_size is 101, more than the 100 images of the demo test split"
    ):
        load_study(config)
    config["deploy"]["enabled"] = False
    load_study(config)


@pytest.mark.parametrize(
    "section, value",
    [
        ({"latency": {"runs": 0}}, "runs"),
        ({"latency": {"batch_size": 1}}, "batch_size"),
        ({"tolerance": {"min_top1_agreement": 1.5}}, "min_top1_agreement"),
        ({"latency": {"threads": 2}}, "threads"),
    ],
)
def test_bad_deploy_options_are_refused_by_name(section, value):
    config = demo_config()
    config["deploy"] = merge(config["deploy"], section)
    with pytest.raises(StudyError, match=value):
        load_study(config)


@pytest.mark.parametrize(
    ("where", "name"),
    [
        ("variants", "../outside"),
        ("study.variants", "a/b"),
        ("study.datasets", "../demo"),
        ("variants", ".hidden"),
    ],
)
def test_a_name_that_would_lead_a_path_elsewhere_is_refused(where, name):
    config = demo_config()
    if where == "variants":
        config["variants"][name] = dict(
            config["variants"]["paper"]
        )  # defined, as a pretraining source may be
    else:
        section, key = where.split(".")
        config[section][key] = [*config[section][key], name]

    with pytest.raises(
        StudyError, match=rf"invalid name {re.escape(repr(name))} at {where}.*letters, digits"
    ):
        load_study(config)


@pytest.mark.parametrize(
    ("section", "key", "value"), [("study", "seeds", [0, 1.0]), ("study", "depths", [20.0])]
)
def test_an_integer_setting_written_as_a_float_is_refused(section, key, value):
    config = demo_config()
    config[section][key] = value

    with pytest.raises(StudyError, match=rf"at {section}\.{key}\[\d\]: .* is not of type 'integer'"):
        load_study(config)


def test_a_key_given_twice_in_a_configuration_file_is_refused_with_its_line(tmp_path):
    single, double = tmp_path / "single.yaml", tmp_path / "double.yaml"
    single.write_text("study:\n  seeds: [0]\n  depths: [20]\n")
    double.write_text("study:\n  seeds: [0]\n  depths: [20]\n  seeds: [1]\n")

    check_unique_keys([ROOT / "config" / "config.yaml", ROOT / "config" / "demo.yaml", single])
    with pytest.raises(StudyError, match=r"double.yaml, line 4: the key 'seeds' is given twice"):
        check_unique_keys([single, double])


def test_a_fraction_above_one_is_refused():
    config = demo_config()
    config["deploy"] = {"tolerance": {"max_relative_logit_difference": 7}}

    with pytest.raises(
        StudyError, match=r"deploy.tolerance.max_relative_logit_difference: 7 is greater than"
    ):
        load_study(config)


def test_a_runs_compute_is_its_depth_times_its_width_squared():
    study = load_study(demo_config())
    assert study.compute(Run("demo", "paper", 20, 0)) == 20
    width = study.recipes["wide"]["model"]["width"]
    assert width > 1 and study.compute(Run("demo", "wide", 8, 1)) == 8 * width**2
