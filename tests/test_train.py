import ast
import csv
import io
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_config import study_config

from cifar_resnet import checkpoint, datasets
from cifar_resnet import run as run_module
from cifar_resnet import train as train_module
from cifar_resnet.config import Run, load_study, merge
from cifar_resnet.errors import StudyError
from cifar_resnet.evaluate import Evaluation, evaluate_run
from cifar_resnet.files import read_json
from cifar_resnet.models import ModelSpec, build_model
from cifar_resnet.provenance import describe_device, git_commit, versions
from cifar_resnet.records import read_history
from cifar_resnet.run import Outputs, train_job, train_run
from cifar_resnet.runtime import Runtime
from cifar_resnet.selection import Monitor
from cifar_resnet.tensors import load_tensors, save_tensors
from cifar_resnet.train import build_trainer
from cifar_resnet.trained import load_network
from cifar_resnet.workflow import Stopped

DEPTHS = (20, 32, 44, 56, 110)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical comparisons need the same thread count in every run
    yield
    torch.set_num_threads(threads)


def small(run_config, **training):
    """The run config with a tiny budget: batch 32 (10 steps per epoch on the 320 training images)."""
    shrink = {"recipe": {"training": {"batch_size": 32, "unit": "iterations", "duration": 3, **training}}}
    config = merge(run_config, shrink)
    schedule = config["recipe"]["schedule"]
    if schedule["kind"] == "multistep":
        schedule.update(milestones=[2], factors=[0.1])
    if schedule["kind"] == "step":
        schedule["every"] = 1
    return config


def outputs(folder: Path) -> Outputs:
    return Outputs(folder / "model.pt", folder / "history.csv", folder / "train.json", folder / "eval.json")


def run(study, variant, depth=8, seed=0, **training):
    from cifar_resnet.config import Run

    return small(study.run_config(Run("demo", variant, depth, seed)), **training)


def train(config, prepared, folder, pretrained=None, **options) -> dict:
    """A training job's work: the run trained, then evaluated; returns the training's summary."""
    return train_job(
        config, prepared, outputs(folder), folder / "resume.pt", pretrained=pretrained, **options
    )


@pytest.fixture(scope="module")
def pretrained_paper(prepared, study, tmp_path_factory):
    folder = tmp_path_factory.mktemp("paper")
    torch.set_num_threads(1)
    train(run(study, "paper", duration=4), prepared, folder)
    return folder / "model.pt"


@pytest.mark.parametrize("depth", DEPTHS)
def test_every_variant_builds_and_steps_at_every_depth(study, depth):
    for variant, recipe in study.recipes.items():
        model = build_model(ModelSpec(depth=depth, num_classes=10, **recipe["model"]))
        loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]))
        loss.backward()
        assert torch.isfinite(loss), variant


@pytest.mark.parametrize(
    "variant",
    [
        "paper",
        "projection",
        "preact",
        "dropout",
        "dense-dropout",
        "smooth-lr",
        "step-lr",
        "nadam",
        "plateau",
        "wide",
        "frozen",
        "finetune",
    ],
)
def test_every_variant_trains_a_few_iterations(study, prepared, pretrained_paper, tmp_path, variant):
    config = run(study, variant)
    pretrained = pretrained_paper if config["recipe"]["pretrained"] else None
    summary = train(config, prepared, tmp_path, pretrained)
    assert summary["iterations"] == 3 and summary["epochs"] == 1
    assert not (tmp_path / "resume.pt").exists()
    state = load_tensors(tmp_path / "model.pt")
    model = build_model(ModelSpec(depth=8, num_classes=10, **config["recipe"]["model"]))
    model.load_state_dict(state)  # a plain state_dict of the recorded architecture, loadable weights_only
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,iteration,lr,train_loss") and len(history) == 2


def test_frozen_backbone_and_bn_statistics_stay_bit_identical(study, prepared, pretrained_paper, tmp_path):
    train(run(study, "frozen", duration=12), prepared, tmp_path, pretrained_paper)
    before, after = load_tensors(pretrained_paper), load_tensors(tmp_path / "model.pt")
    backbone = [key for key in before if key.startswith("backbone.")]
    assert any("running_mean" in key for key in backbone)
    for key in backbone:
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["head.0.weight"], after["head.0.weight"])


def test_finetune_starts_from_the_pretrained_backbone(study, prepared, tmp_path):
    """Pretrained on another seed than the fine-tuning run: the fine-tuned backbone must sit near the
    pretrained weights, not near this seed's own initialisation."""
    pretrained = tmp_path / "pretrained"
    train(run(study, "paper", seed=1, duration=4), prepared, pretrained)
    train(
        run(study, "finetune", seed=0, duration=1), prepared, tmp_path / "finetuned", pretrained / "model.pt"
    )
    source, after = load_tensors(pretrained / "model.pt"), load_tensors(tmp_path / "finetuned" / "model.pt")
    torch.manual_seed(0)  # what the fine-tuning run's model starts from before loading the backbone
    own_start = build_model(ModelSpec(8)).state_dict()
    stem = "backbone.0.weight"
    assert not torch.equal(source[stem], after[stem])  # it was trained further
    assert (after[stem] - source[stem]).abs().max() < 0.1 * (after[stem] - own_start[stem]).abs().max()


def test_a_pretrained_model_of_another_depth_is_refused_naming_it(study, prepared, tmp_path):
    """A fine-tuning run whose pretrained model has another backbone stops with one sentence naming the
    file, not with torch's error under a traceback."""
    other = tmp_path / "resnet32.pt"
    save_tensors(other, build_model(ModelSpec(32)).state_dict())
    data = datasets.load_prepared(prepared, splits=("train", "val"))
    config = run(study, "finetune")
    with pytest.raises(StudyError, match=f"pretrained checkpoint {other} does not fit this model's backbone"):
        build_trainer(config, data, other, Runtime.start(config["runtime"]))


def test_a_training_split_smaller_than_one_batch_is_refused_and_one_batch_trains(study, prepared):
    """The trainer's own check, behind the study's (a prepared file can come from another
    validation_fraction): one whole batch makes an epoch of one step, one image fewer none."""
    data = datasets.load_prepared(prepared, splits=("train", "val"))
    images = len(data["train_labels"])
    assert trainer_of(run(study, "paper", batch_size=images), data).steps_per_epoch == 1
    with pytest.raises(StudyError, match=f"has {images} images, fewer than one batch of {images + 1}"):
        trainer_of(run(study, "paper", batch_size=images + 1), data)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream", [Terminal, io.StringIO])
def test_on_a_terminal_the_step_counter_shows_and_is_cleared_after_each_epoch(
    study, prepared, monkeypatch, stream
):
    monkeypatch.setattr(sys, "stderr", stream())
    data = datasets.load_prepared(prepared, splits=("train", "val"))
    trainer = trainer_of(run(study, "paper", unit="epochs", duration=2), data)  # 10 steps an epoch
    train_module.train_epoch(trainer, 1)
    counter = "".join(f"\repoch 1/2 step {step}/10" for step in range(1, 11)) + "\r"
    assert sys.stderr.getvalue() == (counter if stream is Terminal else "")


def test_same_seed_gives_identical_results_and_another_seed_does_not(study, prepared, tmp_path):
    results = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        summary = train(run(study, "dropout", seed=seed, duration=12), prepared, tmp_path / name)
        results.append((load_tensors(tmp_path / name / "model.pt"), summary["selected_val_accuracy"]))
    (first, accuracy), (second, accuracy_again), (other, _) = results
    assert all(torch.equal(first[k], second[k]) for k in first) and accuracy == accuracy_again
    assert not torch.equal(first["head.1.weight"], other["head.1.weight"])


class ScriptedValidation:
    """Stands in for the trainer's validation: returns the scripted loss and accuracy of each epoch,
    records which split it was given and keeps the model's weights at every epoch."""

    def __init__(self, losses, accuracies):
        self.losses, self.accuracies = list(losses), list(accuracies)
        self.splits, self.weights = [], []

    def __call__(self, model, split, *args):
        self.splits.append(split)
        self.weights.append({k: v.clone() for k, v in model.state_dict().items()})
        epoch = len(self.splits) - 1
        return Evaluation(self.losses[epoch], self.accuracies[epoch], torch.zeros_like(split.labels))


def scripted(monkeypatch, losses, accuracies) -> ScriptedValidation:
    validation = ScriptedValidation(losses, accuracies)
    monkeypatch.setattr(train_module, "evaluate_split", validation)
    return validation


@pytest.mark.parametrize(
    ("selection", "best_epoch"),
    [("best_val_accuracy", 2), ("best_val_loss", 3), ("final", 4)],
)
def test_selection_keeps_the_best_validation_epochs_model(
    study, prepared, tmp_path, monkeypatch, selection, best_epoch
):
    # accuracy peaks at epoch 2, loss bottoms at epoch 3: neither is the last epoch
    validation = scripted(monkeypatch, losses=[2.0, 1.5, 1.2, 1.4], accuracies=[0.3, 0.8, 0.6, 0.5])
    summary = train(run(study, "paper", unit="epochs", duration=4, selection=selection), prepared, tmp_path)
    assert summary["selected_epoch"] == best_epoch and summary["epochs"] == 4
    assert summary["selected_val_accuracy"] == validation.accuracies[best_epoch - 1]
    model = load_tensors(tmp_path / "model.pt")
    assert all(torch.equal(model[k], validation.weights[best_epoch - 1][k]) for k in model)
    val_labels = datasets.load_prepared(prepared, splits=("val",))["val_labels"]
    assert all(torch.equal(split.labels, val_labels) for split in validation.splits)  # never train or test


@pytest.mark.parametrize(
    ("monitor", "stopped_after"),
    [("val_loss", 5), ("val_accuracy", 4)],  # the loss is best at epoch 3, the accuracy at epoch 2
)
def test_early_stopping_stops_patience_epochs_after_the_best(
    study, prepared, tmp_path, monkeypatch, monitor, stopped_after
):
    scripted(monkeypatch, losses=[2.0, 1.5, 1.2, 1.9, 1.3, 1.0], accuracies=[0.3, 0.8, 0.6, 0.5, 0.7, 0.9])
    config = run(study, "paper", unit="epochs", duration=6)
    config["recipe"]["training"]["early_stopping"] = {"monitor": monitor, "patience": 2}
    summary = train(config, prepared, tmp_path)
    assert summary["stopped_early"] and summary["epochs"] == stopped_after


TRAIN_IN_SUBPROCESS = """
import json, sys, torch
from pathlib import Path
from cifar_resnet.run import Outputs, train_job
from cifar_resnet.selection import Monitor
torch.set_num_threads(1)
config, prepared, folder = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
names = ("model.pt", "history.csv", "train.json", "eval.json")
outputs = Outputs(*(folder / name for name in names))
train_job(config, prepared, outputs, folder / "resume.pt", checkpoint_interval=0)
"""


def signalled_training(script: str, config, prepared, folder: Path, written: str, after: float):
    """``script`` training ``config`` into ``folder`` in a process of its own, returned ``after`` seconds
    past the moment its training first wrote ``written`` there: a signal sent then lands in training."""
    folder.mkdir()
    process = subprocess.Popen([sys.executable, "-c", script, json.dumps(config), str(prepared), str(folder)])
    deadline = time.monotonic() + 120
    while not (folder / written).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(after)
    return process


def check_kill_and_resume(config, prepared, tmp_path, into_epoch=0.3):
    """Train ``config`` uninterrupted, then in a process killed (SIGKILL) ``into_epoch`` seconds after
    its first resume state, resumed here: it must end with the same weights, history and selection."""
    train(config, prepared, tmp_path / "uninterrupted")

    killed = tmp_path / "killed"
    process = signalled_training(TRAIN_IN_SUBPROCESS, config, prepared, killed, "resume.pt", into_epoch)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = load_tensors(killed / "resume.pt")["progress"]
    assert 1 <= state["epoch"] < config["recipe"]["training"]["duration"], "the kill must land in training"
    assert not (killed / "model.pt").exists()

    summary = train(config, prepared, killed)
    expected, resumed = (
        load_tensors(tmp_path / "uninterrupted" / "model.pt"),
        load_tensors(killed / "model.pt"),
    )
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    strip = lambda path: [row.split(",")[:7] for row in path.read_text().splitlines()]  # noqa: E731
    assert strip(killed / "history.csv") == strip(tmp_path / "uninterrupted" / "history.csv")
    assert (
        summary["selected_val_accuracy"]
        == read_json(tmp_path / "uninterrupted" / "train.json")["selected_val_accuracy"]
    )
    assert not (killed / "resume.pt").exists()


@pytest.mark.slow  # a training process, killed
def test_a_job_killed_mid_epoch_resumes_to_identical_results(study, prepared, tmp_path):
    config = run(study, "plateau", unit="epochs", duration=6)  # plateau: the schedule's state resumes too
    check_kill_and_resume(config, prepared, tmp_path)


class StopAfter:
    """A stop request that arrives once the step loop has asked ``steps`` times (about ``steps`` steps)."""

    name = "SIGTERM"

    def __init__(self, steps: int):
        self.left = steps

    def __call__(self) -> bool:
        self.left -= 1
        return self.left < 0


def assert_same_run(folder: Path, reference: Path) -> None:
    expected, resumed = load_tensors(reference / "model.pt"), load_tensors(folder / "model.pt")
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    strip = lambda path: [row.split(",")[:7] for row in path.read_text().splitlines()]  # noqa: E731
    assert strip(folder / "history.csv") == strip(reference / "history.csv")


# 10 steps per epoch: the stop lands mid-way through the second epoch's steps, or at the third's first
@pytest.mark.parametrize(("steps", "epoch", "step"), [(13, 2, 3), (20, 3, 0)])
def test_a_stop_request_saves_the_epoch_at_its_step_and_the_rerun_continues_identically(
    study, prepared, tmp_path, monkeypatch, steps, epoch, step
):
    """Dropout draws from the global generator at every step: the resumed steps draw what the
    uninterrupted ones did only if the stop saved it mid-epoch."""
    config = run(study, "dropout", unit="epochs", duration=3)
    train(config, prepared, tmp_path / "uninterrupted")
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    monkeypatch.setattr(run_module, "stop_request", StopAfter(steps))
    where = rf"at epoch {epoch}/3, step {step} \(iteration {steps}\); its state is saved in .*resume.pt"
    with pytest.raises(Stopped, match=rf"^Stopped by SIGTERM \(.*\) {where}"):
        train(config, prepared, stopped, checkpoint_interval=3600)
    state = load_tensors(stopped / "resume.pt")["progress"]
    assert (state["epoch"], state["partial"]["epoch"], state["partial"]["steps"]) == (epoch - 1, epoch, step)
    assert not (stopped / "model.pt").exists() and (stopped / "history.csv").is_file()

    monkeypatch.undo()
    summary = train(config, prepared, stopped)
    assert_same_run(stopped, tmp_path / "uninterrupted")
    assert not (stopped / "resume.pt").exists()
    # the run's train_seconds count both processes; the resumed process's timings its own steps only
    rows = read_history(stopped / "history.csv")
    assert summary["train_seconds"] == pytest.approx(sum(row["seconds"] for row in rows))
    resumed_seconds = sum(row["seconds"] for row in rows[epoch - 1 :]) - state["partial"]["seconds"]
    assert summary["timings"]["training_seconds"] == pytest.approx(resumed_seconds)


SIGTERM_JOB = """
import json, sys, types, torch
from pathlib import Path
from cifar_resnet.run import Outputs, train_job
from cifar_resnet.workflow import run_job
torch.set_num_threads(1)
config, prepared, folder = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
outputs = Outputs(*(folder / name for name in ("model.pt", "history.csv", "train.json", "eval.json")))
job = types.SimpleNamespace(log=[str(folder / "train.log")], threads=1)
work = lambda: train_job(config, prepared, outputs, folder / "resume.pt", checkpoint_interval=3600)
run_job(job, work, resumable=True)
"""


@pytest.mark.slow  # a training process, stopped
def test_a_training_job_given_sigterm_saves_its_work_says_where_and_resumes_there(study, prepared, tmp_path):
    """What SLURM sends at a job's time limit: the job saves where it stands (no periodic checkpoint has
    been written), logs one line and exits with 143; the rerun ends as an uninterrupted run."""
    config = run(study, "dropout", unit="epochs", duration=6)
    train(config, prepared, tmp_path / "uninterrupted")
    stopped = tmp_path / "stopped"
    process = signalled_training(SIGTERM_JOB, config, prepared, stopped, "history.csv", 0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    lines = (stopped / "train.log").read_text().splitlines()
    assert "ERROR Stopped by SIGTERM (a cluster's time limit, preemption or scancel) at epoch" in lines[-1]
    state = load_tensors(stopped / "resume.pt")["progress"]
    assert 1 <= state["epoch"] < 6 and not (stopped / "model.pt").exists()

    train(config, prepared, stopped)
    assert_same_run(stopped, tmp_path / "uninterrupted")


@pytest.mark.parametrize("content", [b"not a checkpoint", b"PK\x03\x04truncated"])
def test_unreadable_resume_file_is_reported_and_training_restarts(study, prepared, tmp_path, caplog, content):
    config = run(study, "paper")
    train(config, prepared, tmp_path / "clean")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "resume.pt").write_bytes(content)
    train(config, prepared, tmp_path / "damaged")
    assert "is unreadable" in caplog.text and "starting from scratch" in caplog.text
    clean, damaged = (
        load_tensors(tmp_path / "clean" / "model.pt"),
        load_tensors(tmp_path / "damaged" / "model.pt"),
    )
    assert all(torch.equal(clean[k], damaged[k]) for k in clean)


def test_resume_file_of_another_config_is_not_used(study, prepared, tmp_path, caplog):
    other = run(study, "paper", duration=20)
    process_folder = tmp_path / "run"
    train(other, prepared, process_folder)
    foreign = run_module.Progress("0123456789abcdef", epoch=1)
    torch.save({"progress": foreign.plain()}, process_folder / "resume.pt")
    summary = train(run(study, "paper"), prepared, process_folder)
    assert "belongs to another configuration" in caplog.text
    assert summary["iterations"] == 3


def test_a_resume_file_of_the_earlier_layout_is_not_used(study, prepared, tmp_path, caplog):
    """A resume state of this configuration as the code before the progress's one entry wrote it, the
    progress beside the model's state: refused with a warning, and the run trains from the start."""
    config = run(study, "paper", duration=20)
    train(config, prepared, tmp_path / "clean")
    earlier = run_module.Progress(run_module.config_hash(config), epoch=1, history=[{"epoch": 1}]).plain()
    torch.save(
        {**earlier, "model": {}, "optimizer": {}, "schedule": {}, "monitors": {}}, tmp_path / "resume.pt"
    )
    summary = train(config, prepared, tmp_path)
    assert "is not a resume state of this version: starting from scratch" in caplog.text
    assert summary["iterations"] == 20 and not (tmp_path / "resume.pt").exists()
    clean, restarted = load_tensors(tmp_path / "clean" / "model.pt"), load_tensors(tmp_path / "model.pt")
    assert all(torch.equal(clean[k], restarted[k]) for k in clean)


def test_the_progress_is_saved_as_plain_data_and_restored_as_it_was(tmp_path):
    """Its stopped epoch included, through a file loaded weights_only; a progress of other fields (an
    earlier version's) is refused in one sentence."""
    partial = train_module.PartialEpoch(2, 3, torch.arange(3.0), 7, 1.5, 0.1, torch.get_rng_state(), None)
    weights = {"w": torch.ones(2)}
    progress = run_module.Progress(
        "abc", 1, [{"epoch": 1}], 2.5, {"epoch": 1, "model": weights}, True, partial
    )
    save_tensors(tmp_path / "resume.pt", {"progress": progress.plain()})
    restored = run_module.Progress.of_plain(load_tensors(tmp_path / "resume.pt")["progress"])
    same = lambda a, b: torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b  # noqa: E731
    assert all(same(getattr(restored.partial, name), value) for name, value in vars(partial).items())
    assert restored.selected["epoch"] == 1 and restored.selected["model"]["w"].equal(weights["w"])
    fields = ("config_hash", "epoch", "history", "train_seconds", "stopped_early")
    assert [getattr(restored, name) for name in fields] == ["abc", 1, [{"epoch": 1}], 2.5, True]
    with pytest.raises(StudyError, match=r"its progress holds \['config_hash', 'epoch'\], not \["):
        run_module.Progress.of_plain({"config_hash": "abc", "epoch": 1})


def trainer_of(config: dict, data: dict):
    """The trainer a training job builds for ``config`` on ``data``, without a pretrained backbone."""
    return build_trainer(config, data, None, Runtime.start(config["runtime"]))


def test_a_resume_file_of_another_optimizer_version_is_not_used(study, prepared, tmp_path, caplog):
    """A resume state with the optimizer state that this code's own optimizer wrote before it used
    torch.optim, for the same configuration: refused before the model is touched, and the run trains
    from the start."""
    config = run(study, "paper", duration=20)
    train(config, prepared, tmp_path / "clean")
    trainer = trainer_of(config, datasets.load_prepared(prepared, splits=("train", "val")))
    own = [{"momentum_buffer": torch.zeros_like(parameter)} for parameter in trainer.model.parameters()]
    foreign = {"name": "sgd", "state": own}
    progress = run_module.Progress(run_module.config_hash(config), epoch=1).plain()
    torch.save({"progress": progress, "optimizer": foreign, "model": {}}, tmp_path / "resume.pt")
    summary = train(config, prepared, tmp_path)
    assert "does not fit" in caplog.text and "starting from scratch" in caplog.text
    assert "is not a torch.optim state of this run's SGD (KeyError" in caplog.text  # what was wrong
    assert summary["iterations"] == 20 and not (tmp_path / "resume.pt").exists()
    clean, restarted = load_tensors(tmp_path / "clean" / "model.pt"), load_tensors(tmp_path / "model.pt")
    assert all(torch.equal(clean[k], restarted[k]) for k in clean)


def test_a_diverging_loss_stops_naming_epoch_and_iteration(study, prepared, tmp_path):
    config = run(study, "paper", duration=10)
    config["recipe"]["optimizer"]["lr"] = 1e12
    config["recipe"]["warmup"] = None
    with pytest.raises(StudyError, match=r"the loss became (nan|inf) at epoch 1, iteration \d+"):
        train(config, prepared, tmp_path)
    assert not (tmp_path / "model.pt").exists()


def test_the_divergence_names_the_first_step_whose_loss_is_not_finite():
    train_module.check_finite(torch.tensor([2.3, 2.2, 2.1]), 3, 20)  # finite: nothing to say
    losses = torch.tensor([2.3, 2.2, float("nan"), float("inf")])  # steps 21 to 24 of the run
    with pytest.raises(StudyError, match=r"the loss became nan at epoch 3, iteration 23;"):
        train_module.check_finite(losses, 3, 20)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_demanded_but_absent_fails_and_auto_falls_back(study, prepared, tmp_path, caplog):
    config = run(study, "paper")
    config["runtime"]["device"] = "cuda"
    with pytest.raises(StudyError, match="CUDA is not available"):
        train(config, prepared, tmp_path / "cuda")
    config["runtime"]["device"] = "auto"
    summary = train(config, prepared, tmp_path / "auto")
    assert "CUDA is not available, training on the CPU" in caplog.text
    assert summary["device"].startswith("cpu")


def test_evaluation_reports_every_metric(study, prepared, tmp_path):
    config = run(study, "paper", depth=20, duration=1)  # ResNet-20, whose size the paper gives
    train(config, prepared, tmp_path / "run")
    runtime = Runtime.start(config["runtime"])
    train_summary, model = tmp_path / "run" / "train.json", tmp_path / "run" / "model.pt"
    metrics = evaluate_run(train_summary, model, prepared, tmp_path / "e.json", runtime)
    assert metrics == read_json(tmp_path / "e.json")
    matrix = torch.tensor(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == metrics["num_test_images"] == 100
    assert metrics["test_accuracy"] == pytest.approx(matrix.diag().sum().item() / 100)
    assert metrics["test_error"] == pytest.approx(100 * (1 - metrics["test_accuracy"]))
    assert metrics["params"] == 269_722
    assert 40e6 < metrics["macs"] < 42e6  # ResNet-20: about 41M multiply-accumulates per image
    assert len(metrics["per_class_accuracy"]) == 10 and metrics["inference_images_per_s"] > 0


def test_a_train_json_without_the_runs_config_is_refused_naming_the_file(tmp_path):
    """Evaluation, deployment and the hub rebuild the model from train.json's config: a file without
    it is named, not met with a KeyError."""
    (tmp_path / "train.json").write_text(json.dumps({"dataset": "demo", "depth": 20}))
    with pytest.raises(StudyError, match=r"train\.json .*lacks .*config"):
        load_network(tmp_path / "train.json", tmp_path / "model.pt")


def test_evaluation_reads_the_test_split_by_its_content(study, prepared, pretrained_paper, tmp_path):
    """With the test split cut to the validation split's size, only their images and labels tell them
    apart: eval.json's confusion matrix and loss must be the model's on the test split's."""
    data = load_tensors(prepared)
    size = len(data["val_labels"])
    data["test_images"], data["test_labels"] = data["test_images"][:size], data["test_labels"][:size]
    run_module.save_tensors(tmp_path / "prepared.pt", data)
    runtime = Runtime.start(run(study, "paper")["runtime"])
    train_summary = pretrained_paper.with_name("train.json")
    metrics = evaluate_run(
        train_summary, pretrained_paper, tmp_path / "prepared.pt", tmp_path / "e.json", runtime
    )
    model = build_model(ModelSpec(8))
    model.load_state_dict(load_tensors(pretrained_paper))

    def outcome(split: str) -> tuple[list, float]:
        """The model's confusion matrix and mean loss on ``split``, in one batch."""
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        with torch.no_grad():
            logits = model.eval()(
                (images.float() / 255 - data["mean"][:, None, None]) / data["std"][:, None, None]
            )
        confusion = torch.zeros(10, 10, dtype=torch.long)
        for label, prediction in zip(labels.tolist(), logits.argmax(1).tolist(), strict=True):
            confusion[label, prediction] += 1
        return confusion.tolist(), torch.nn.functional.cross_entropy(logits, labels).item()

    (test_confusion, test_loss), (_, val_loss) = outcome("test"), outcome("val")
    assert val_loss != pytest.approx(test_loss, rel=1e-3)  # the splits differ where the check looks
    assert metrics["num_test_images"] == size
    assert metrics["confusion_matrix"] == test_confusion
    assert metrics["test_loss"] == pytest.approx(test_loss, rel=1e-5)


def test_train_json_says_where_the_jobs_time_went(study, prepared, tmp_path, caplog):
    caplog.set_level("INFO", logger="cifar_resnet")
    summary = train(run(study, "paper", unit="epochs", duration=3), prepared, tmp_path, checkpoint_interval=0)
    timings = read_json(tmp_path / "train.json")["timings"]
    history = [line.split(",") for line in (tmp_path / "history.csv").read_text().splitlines()]
    assert "val_seconds" in history[0] and len(history) == 4
    epochs = [dict(zip(history[0], row, strict=True)) for row in history[1:]]
    assert timings["training_seconds"] == pytest.approx(sum(float(row["seconds"]) for row in epochs))
    assert timings["validation_seconds"] == pytest.approx(sum(float(row["val_seconds"]) for row in epochs))
    assert timings["training_seconds"] == pytest.approx(summary["train_seconds"])  # not resumed
    assert 0 < timings["first_step_seconds"] < timings["training_seconds"]
    assert timings["startup_seconds"] > 0  # this pytest process started before the run
    assert timings["job_seconds"] == pytest.approx(timings["startup_seconds"] + summary["wall_seconds"])
    parts = ("startup", "setup", "training", "validation", "checkpoint")
    assert sum(timings[f"{part}_seconds"] for part in parts) <= timings["job_seconds"]
    assert timings["checkpoint_seconds"] > 0 and timings["setup_seconds"] > 0
    assert 0 < timings["overhead_fraction"] < 1
    assert any(
        "overhead" in record.getMessage() and "first step" in record.getMessage() for record in caplog.records
    )


def test_train_json_records_the_run_its_inputs_and_its_selected_epoch(study, prepared, tmp_path):
    """train.json, which the release, the hub and the study's tables read: the run it describes, what
    the model's input and output mean, and the selected epoch's figures as history.csv has them."""
    config = run(study, "paper", unit="epochs", duration=3, selection="best_val_loss")
    started = time.perf_counter()
    summary = train(config, prepared, tmp_path)
    job_seconds = time.perf_counter() - started
    written = read_json(tmp_path / "train.json")
    assert written == json.loads(json.dumps(summary))  # the returned summary is the one written
    assert [written[key] for key in ("dataset", "variant", "depth", "seed")] == [
        config[key] for key in ("dataset", "variant", "depth", "seed")
    ]
    assert written["config"] == config and written["config_hash"] == run_module.config_hash(config)
    assert ModelSpec(**written["model"]).depth == config["depth"]
    data = datasets.load_prepared(prepared, splits=("train", "val"))
    assert written["normalization"] == {"mean": data["mean"].tolist(), "std": data["std"].tolist()}
    assert written["class_names"] == data["class_names"]
    with open(tmp_path / "history.csv", newline="") as handle:
        history = list(csv.DictReader(handle))
    assert written["epochs"] == len(history) == 3 and not written["stopped_early"]
    assert written["iterations"] == int(history[-1]["iteration"])
    losses = [float(row["val_loss"]) for row in history]
    selected = history[losses.index(min(losses))]
    assert written["selected_epoch"] == int(selected["epoch"])
    assert written["selected_val_loss"] == float(selected["val_loss"])
    assert written["selected_val_accuracy"] == float(selected["val_accuracy"])
    assert written["train_seconds"] == pytest.approx(sum(float(row["seconds"]) for row in history))
    assert written["train_seconds"] < written["wall_seconds"] < job_seconds
    assert written["images_per_s"] == statistics.median(float(row["images_per_s"]) for row in history)
    for row in history:  # an epoch's speed: its training images (10 steps of 32) over its step loop's time
        assert float(row["images_per_s"]) * float(row["seconds"]) == pytest.approx(10 * 32)
    assert written["threads"] == torch.get_num_threads() == 1
    assert written["device"] == describe_device(torch.device("cpu"))
    assert written["execution"]["device"] == "cpu" and "compiled_graphs" in written["execution"]
    assert written["versions"] == versions() and written["git_commit"] == git_commit()


def test_process_age_counts_from_the_start_of_the_process():
    code = "import time; time.sleep(0.5); from cifar_resnet.timings import process_age; print(process_age())"
    age = float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert 0.5 <= age < 60


@pytest.mark.parametrize(("interval", "saves"), [(0, 2), (3600, 0)])
def test_the_resume_state_is_saved_once_the_checkpoint_interval_has_passed(
    study, prepared, tmp_path, monkeypatch, interval, saves
):
    saved = []
    original = run_module.save_tensors
    for module in (run_module, checkpoint):  # the outputs, the resume state
        monkeypatch.setattr(
            module, "save_tensors", lambda path, data: saved.append(path) or original(path, data)
        )
    train(
        run(study, "paper", unit="epochs", duration=3),
        prepared,
        tmp_path,
        checkpoint_interval=interval,
    )
    assert saved.count(tmp_path / "resume.pt") == saves  # never after the last epoch: the outputs follow
    assert saved[-1] == tmp_path / "model.pt" and not (tmp_path / "resume.pt").exists()


def test_the_checkpoint_seconds_add_up_every_save(study, prepared, tmp_path, monkeypatch):
    """train.json's checkpoint time is the sum over the resume states saved, not the last save's."""
    durations = []
    save = checkpoint.save_resume_state

    def timed(*args):
        started = time.perf_counter()
        time.sleep(0.1)
        save(*args)
        durations.append(time.perf_counter() - started)

    monkeypatch.setattr(checkpoint, "save_resume_state", timed)
    summary = train(run(study, "paper", unit="epochs", duration=3), prepared, tmp_path, checkpoint_interval=0)
    assert len(durations) == 2
    assert summary["timings"]["checkpoint_seconds"] >= sum(durations)


def test_the_recipe_reaches_the_optimizer_and_the_initialisation(prepared):
    study = load_study(study_config())  # the paper's recipe, not the demo's shortened one
    data = datasets.load_prepared(prepared)
    paper = trainer_of(study.run_config(Run("demo", "paper", 20, 0)), data)
    settings = paper.optimizer.defaults
    assert isinstance(paper.optimizer, torch.optim.SGD)
    assert (settings["momentum"], settings["weight_decay"], settings["nesterov"]) == (0.9, 1e-4, False)
    assert paper.optimizer.param_groups[0]["lr"] == 0.1
    assert paper.schedule.at(0) == 0.1 and paper.batch_size == 128
    nadam = trainer_of(study.run_config(Run("demo", "nadam", 20, 0)), data)
    assert isinstance(nadam.optimizer, torch.optim.NAdam) and nadam.optimizer.defaults["foreach"]
    # He initialisation: std sqrt(2 / fan_in) for the last stage's 3x3 convolutions (fan_in 576)
    weights = torch.cat(
        [m.weight.flatten() for m in paper.model.modules() if getattr(m, "in_channels", 0) == 64]
    )
    assert weights.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)


def test_training_never_reads_the_test_split(study, prepared, tmp_path, monkeypatch):
    """The training reads a prepared file without the test split; the job's evaluation, which follows
    the selection, is the first to load the test split."""
    data = load_tensors(prepared)
    without_test = {key: value for key, value in data.items() if not key.startswith("test_")}
    run_module.save_tensors(tmp_path / "prepared.pt", without_test)
    folder = tmp_path / "run"
    config = run(study, "paper")
    runtime = Runtime.start(config["runtime"])
    summary = train_run(config, tmp_path / "prepared.pt", outputs(folder), folder / "resume.pt", runtime)
    assert summary["iterations"] == 3 and not (folder / "eval.json").exists()
    evaluated = []
    monkeypatch.setattr(
        run_module,
        "evaluate_run",
        lambda summary, model, *_: evaluated.append(model.exists() and summary.exists()),
    )
    train(run(study, "paper"), prepared, tmp_path / "job")
    assert evaluated == [True]  # once, after the selected model and train.json were written


def test_a_job_stopped_during_its_evaluation_resumes_instead_of_training_again(
    study, prepared, tmp_path, monkeypatch, caplog
):
    caplog.set_level("INFO", logger="cifar_resnet")
    config = run(study, "paper", unit="epochs", duration=3)

    def stopped(*paths):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "evaluate_run", stopped)
        with pytest.raises(KeyboardInterrupt):
            train(config, prepared, tmp_path, checkpoint_interval=0)
    saved = load_tensors(tmp_path / "resume.pt")["progress"]
    assert saved["epoch"] == 2  # saved after every epoch but the last
    train(config, prepared, tmp_path)
    assert "resumed from" in caplog.text and (tmp_path / "eval.json").exists()
    assert not (tmp_path / "resume.pt").exists()


def test_a_run_stopped_between_epochs_resumes_its_selection_and_early_stopping(
    study, prepared, tmp_path, monkeypatch
):
    """The monitors' state travels in the resume state: stopped after its third epoch and resumed, a run
    selects and stops where an uninterrupted one does. Monitors started afresh at epoch 4 would select
    epoch 5 and never stop early."""
    config = run(study, "paper", unit="epochs", duration=6, selection="best_val_accuracy")
    config["recipe"]["training"]["early_stopping"] = {"monitor": "val_loss", "patience": 3}
    losses, accuracies = [2.0, 1.5, 1.6, 1.7, 1.8, 1.9], [0.3, 0.8, 0.6, 0.5, 0.7, 0.9]
    scripted(monkeypatch, losses, accuracies)
    uninterrupted = train(config, prepared, tmp_path / "uninterrupted")
    assert (uninterrupted["selected_epoch"], uninterrupted["epochs"], uninterrupted["stopped_early"]) == (
        2,
        5,
        True,
    )

    epoch_of_run = run_module.train_epoch

    def stopped_in_epoch_4(trainer, epoch, partial):
        if epoch == 4:
            raise KeyboardInterrupt
        return epoch_of_run(trainer, epoch, partial)

    scripted(monkeypatch, losses, accuracies)
    with monkeypatch.context() as patch:
        patch.setattr(run_module, "train_epoch", stopped_in_epoch_4)
        with pytest.raises(KeyboardInterrupt):
            train(config, prepared, tmp_path, checkpoint_interval=0)
    assert load_tensors(tmp_path / "resume.pt")["progress"]["epoch"] == 3
    scripted(monkeypatch, losses[3:], accuracies[3:])  # the validation of epochs 4 to 6
    resumed = train(config, prepared, tmp_path)
    for key in ("selected_epoch", "epochs", "stopped_early", "selected_val_accuracy"):
        assert resumed[key] == uninterrupted[key], key
    expected, model = (
        load_tensors(tmp_path / "uninterrupted" / "model.pt"),
        load_tensors(tmp_path / "model.pt"),
    )
    assert all(torch.equal(expected[k], model[k]) for k in expected)


def test_every_checkpoint_is_loaded_weights_only():
    """torch.load is called in one place, tensors.load_tensors, and there with weights_only=True: no
    loader of the package can unpickle arbitrary objects."""
    calls = []
    for module in sorted(Path(train_module.__file__).parent.glob("**/*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                keywords = {keyword.arg: ast.unparse(keyword.value) for keyword in node.keywords}
                calls.append((module.name, keywords.get("weights_only")))
    assert calls == [("tensors.py", "True")]


def test_a_tie_is_no_improvement():
    """The earliest of equally good epochs stays selected, and a tie counts towards early stopping."""
    monitor = Monitor("val_accuracy")
    assert monitor.update({"val_accuracy": 0.8})
    assert not monitor.update({"val_accuracy": 0.8})
    assert monitor.epochs_without_improvement == 1


@pytest.mark.slow  # a training process
def test_a_training_job_does_not_import_torchvision(study, prepared, tmp_path):
    """Which it would for its version, which its metadata gives without the import (docs/benchmark.md)."""
    (tmp_path / "run.json").write_text(json.dumps(run(study, "paper")))
    program = """
import json, sys
from pathlib import Path
from cifar_resnet.run import Outputs, train_job
config, prepared, folder = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]), Path(sys.argv[3])
names = ("model.pt", "history.csv", "train.json", "eval.json")
train_job(config, prepared, Outputs(*(folder / name for name in names)), folder / "resume.pt")
print(json.dumps("torchvision" in sys.modules))
"""
    arguments = [str(tmp_path / "run.json"), str(prepared), str(tmp_path)]
    ran = subprocess.run([sys.executable, "-c", program, *arguments], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) is False and (tmp_path / "train.json").exists()
