"""The training step against a known answer. A ResNet-8 trained by the training job (``train_run``) for
a few steps must equal, bit for bit on the CPU, a reference written here from PyTorch primitives alone:
the same seeded draws of order, crop offsets and flips, ``F.cross_entropy``, ``torch.optim`` built from
the recipe's settings and the schedule's learning rate at each step. Then every setting of the recipe's
augmentation, optimizer and schedule must change what the step does, and the trainer must follow it."""

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_config import demo_config
from test_train import one_thread, scripted  # noqa: F401 (one_thread: an autouse fixture, one thread per test)

from cifar_resnet.config import Run, load_study, merge
from cifar_resnet.models import ModelSpec, build_model
from cifar_resnet.run import Outputs, train_run
from cifar_resnet.runtime import Runtime
from cifar_resnet.tensors import load_tensors, save_tensors

TRAIN_IMAGES, VAL_IMAGES = 64, 32
BATCH = 16  # 4 steps an epoch
# Two whole epochs and half a third: the last epoch's order is cut short, and the milestone falls
# inside the second epoch.
DURATION, MILESTONE = 10, 6
# What the scripted validation reports each epoch (the plateau schedule follows it): never improving
# after the first epoch.
VAL_ACCURACIES = [0.5, 0.4, 0.3, 0.2, 0.1]


@pytest.fixture(scope="module")
def small_prepared(prepared, tmp_path_factory) -> Path:
    """The demo's prepared file cut to 64 training and 32 validation images: a few steps an epoch."""
    data = load_tensors(prepared)
    for split, count in (("train", TRAIN_IMAGES), ("val", VAL_IMAGES)):
        data[f"{split}_images"], data[f"{split}_labels"] = (
            data[f"{split}_images"][:count],
            data[f"{split}_labels"][:count],
        )
    path = tmp_path_factory.mktemp("small") / "prepared.pt"
    save_tensors(path, data)
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A backbone of another seed whose BN running statistics have moved from their initial values, so
    that a frozen backbone in training mode would change them."""
    torch.manual_seed(7)
    model = build_model(ModelSpec(8))
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 32, 32) * 2 + 1)
    path = tmp_path_factory.mktemp("pretrained") / "model.pt"
    save_tensors(path, model.state_dict())
    return path


def config_of(variant: str, overrides: dict | None = None) -> dict:
    """The demo's run config of ``variant`` at depth 8, seed 0, trained for DURATION iterations of
    BATCH images with the lr divided by 10 at MILESTONE, with ``overrides`` merged into its recipe."""
    study = load_study(demo_config())
    config = study.run_config(Run("demo", variant, 8, 0))
    shrink = {
        "training": {"batch_size": BATCH, "unit": "iterations", "duration": DURATION},
        "schedule": {"kind": "multistep", "milestones": [MILESTONE], "factors": [0.1]},
    }
    config["recipe"] = merge(merge(config["recipe"], shrink), overrides or {})
    return config


def trained(config: dict, prepared: Path, folder: Path, pretrained: Path | None = None):
    """What the training job's training does with ``config``: the final weights and, per epoch, the
    history's iteration, lr, train loss and train accuracy."""
    outputs = Outputs(*(folder / name for name in ("model.pt", "history.csv", "train.json", "eval.json")))
    runtime = Runtime.start(config["runtime"])
    train_run(config, prepared, outputs, folder / "resume.pt", runtime, pretrained)
    with open(outputs.history) as handle:
        history = [
            {key: float(row[key]) for key in ("iteration", "lr", "train_loss", "train_accuracy")}
            for row in csv.DictReader(handle)
        ]
    return load_tensors(outputs.model), history


# --- the reference, from PyTorch primitives --------------------------------------------------------


def crop_and_flip(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator):
    """The paper's augmentation, one image at a time: a 32x32 window of the image zero-padded by
    ``padding`` at offsets drawn for all images first, then a mirror for each image drawn with
    probability one half."""
    count = len(images)
    if padding:
        offsets = torch.randint(0, 2 * padding + 1, (2, count), generator=generator)
        padded = F.pad(images, (padding, padding, padding, padding))
        images = torch.stack(
            [
                padded[i, :, row : row + 32, column : column + 32]
                for i, (row, column) in enumerate(offsets.T.tolist())
            ]
        )
    if flip:
        mirrored = torch.rand(count, generator=generator) < 0.5
        images = torch.stack(
            [image.flip(2) if m else image for image, m in zip(images, mirrored, strict=True)]
        )
    return images


class ReferenceLearningRate:
    """The recipe's learning rate at an iteration: a warm-up for deep enough models, then multistep,
    step, plateau (following the validation accuracies it is told) or constant; milestones and periods
    count in the recipe's training unit."""

    def __init__(self, recipe: dict, depth: int, steps_per_epoch: int):
        self.recipe, self.depth = recipe, depth
        self.unit = steps_per_epoch if recipe["training"]["unit"] == "epochs" else 1
        self.scale, self.best, self.waited = 1.0, -math.inf, 0

    def at(self, iteration: int) -> float:
        base, schedule, warmup = (
            self.recipe["optimizer"]["lr"],
            self.recipe["schedule"],
            self.recipe["warmup"],
        )
        if warmup and self.depth >= warmup["min_depth"] and iteration < warmup["iterations"]:
            return warmup["lr"]
        if schedule["kind"] == "multistep":
            milestones = zip(schedule["milestones"], schedule["factors"], strict=True)
            passed = [factor for milestone, factor in milestones if iteration >= milestone * self.unit]
            return base * passed[-1] if passed else base
        if schedule["kind"] == "step":
            return base * schedule["gamma"] ** (iteration // (schedule["every"] * self.unit))
        if schedule["kind"] == "plateau":
            return max(base * self.scale, schedule.get("min_lr", 0.0))
        return base

    def validated(self, accuracy: float) -> None:
        schedule = self.recipe["schedule"]
        if schedule["kind"] != "plateau":
            return
        if accuracy > self.best:
            self.best, self.waited = accuracy, 0
            return
        self.waited += 1
        if self.waited > schedule["patience"]:
            self.scale, self.waited = self.scale * schedule["factor"], 0


def reference_optimizer(parameters, settings: dict) -> torch.optim.Optimizer:
    """torch.optim's optimizer of the recipe, with torch's defaults for everything the recipe does not
    set. Its foreach implementation, as the trainer's CPU runtime uses: NAdam's single-tensor one rounds
    differently."""
    if settings["name"] == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=settings["lr"],
            momentum=settings["momentum"],
            weight_decay=settings["weight_decay"],
            nesterov=settings["nesterov"],
            foreach=True,
        )
    optimizer = {"adam": torch.optim.Adam, "nadam": torch.optim.NAdam}[settings["name"]]
    return optimizer(parameters, lr=settings["lr"], weight_decay=settings["weight_decay"], foreach=True)


def reference(config: dict, prepared: Path, pretrained: Path | None = None):
    """``config`` trained from PyTorch primitives: the weights and history rows ``trained`` returns. A
    plateau schedule follows VAL_ACCURACIES, which the ``validation`` fixture makes the trainer's."""
    recipe, depth, seed = config["recipe"], config["depth"], config["seed"]
    training, augmentation = recipe["training"], recipe["augmentation"]
    data = load_tensors(prepared)
    images, labels, mean, std = (data[key] for key in ("train_images", "train_labels", "mean", "std"))
    batch = training["batch_size"]
    steps_per_epoch = len(labels) // batch
    total = training["duration"] * (steps_per_epoch if training["unit"] == "epochs" else 1)

    torch.manual_seed(seed)  # the run's initialisation
    model = build_model(ModelSpec(depth, 10, **recipe["model"]))
    frozen = bool(recipe["pretrained"]) and recipe["pretrained"]["freeze_backbone"]
    if recipe["pretrained"]:
        state = load_tensors(pretrained)
        model.backbone.load_state_dict(
            {
                key.removeprefix("backbone."): value
                for key, value in state.items()
                if key.startswith("backbone.")
            }
        )
    if frozen:
        model.backbone.requires_grad_(False)
    optimizer = reference_optimizer(list((model.head if frozen else model).parameters()), recipe["optimizer"])
    learning_rate = ReferenceLearningRate(recipe, depth, steps_per_epoch)

    history, iteration = [], 0
    for epoch in range(1, math.ceil(total / steps_per_epoch) + 1):
        steps = min(steps_per_epoch, total - iteration)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # order and augmentation
        torch.manual_seed(seed * 1_000_003 + epoch)  # dropout
        order = torch.randperm(len(labels), generator=generator)[: steps * batch]
        epoch_images = crop_and_flip(
            images[order], augmentation["crop_padding"], augmentation["flip"], generator
        )
        epoch_labels = labels[order]
        model.train()
        if frozen:
            model.backbone.eval()  # its BN statistics stay the pretrained ones
        losses, correct = [], 0
        for step in range(steps):
            lr = learning_rate.at(iteration)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch_images = epoch_images[step * batch : (step + 1) * batch]
            batch_labels = epoch_labels[step * batch : (step + 1) * batch]
            inputs = (batch_images.float() / 255 - mean[:, None, None]) / std[:, None, None]
            logits = model(inputs)
            loss = F.cross_entropy(logits, batch_labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            correct += int((logits.argmax(1) == batch_labels).sum())
            iteration += 1
        history.append(
            {
                "iteration": float(iteration),
                "lr": lr,
                "train_loss": torch.stack(losses).mean().item(),
                "train_accuracy": correct / (steps * batch),
            }
        )
        learning_rate.validated(VAL_ACCURACIES[epoch - 1])
    return model.state_dict(), history


def same(result, expected) -> bool:
    (weights, history), (expected_weights, expected_history) = result, expected
    assert weights.keys() == expected_weights.keys()
    return history == expected_history and all(torch.equal(weights[k], expected_weights[k]) for k in weights)


@pytest.fixture
def validation(monkeypatch):
    """The validation's accuracies scripted to VAL_ACCURACIES, which the reference's plateau follows."""
    scripted(monkeypatch, losses=[1.0] * len(VAL_ACCURACIES), accuracies=VAL_ACCURACIES)


# --- the known answer -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["paper", "dropout", "nadam", "frozen"])
def test_the_training_step_equals_a_reference_from_pytorch_primitives(
    small_prepared, pretrained, tmp_path, variant
):
    """The paper's recipe and one variant of each kind the step treats differently: a dropout head
    (dropout draws from the epoch's seed), NAdam (foreach, not fused, no momentum), a frozen backbone
    (only the head learns, the backbone's BN stays in eval mode). The validation is the real one, which
    leaves the model in eval mode: each epoch's steps must put it back in training mode."""
    config = config_of(variant)
    backbone = pretrained if config["recipe"]["pretrained"] else None
    expected = reference(config, small_prepared, backbone)
    lr = config["recipe"]["optimizer"]["lr"]
    assert [row["lr"] for row in expected[1]] == [lr, lr * 0.1, lr * 0.1]  # the milestone falls inside
    assert same(trained(config, small_prepared, tmp_path, backbone), expected)


# --- every setting of the recipe reaches the step -------------------------------------------------

TWO_MILESTONES = {"kind": "multistep", "milestones": [3, 9], "factors": [0.5, 0.1]}
STEP = {"kind": "step", "every": 3, "gamma": 0.5}
WARMUP = {"lr": 0.01, "iterations": 3, "min_depth": 8}
# lr 0.1, 0.1, then halved after each epoch without improvement, not below 0.02: 0.05, 0.025
PLATEAU = {"kind": "plateau", "factor": 0.5, "patience": 0, "min_lr": 0.02}
EPOCHS = {"training": {"unit": "epochs", "duration": 4}}


def schedule(**settings) -> dict:
    return {"schedule": settings}


# (variant, the recipe's overrides before, after): the two differ in one setting only.
SETTINGS = {
    "augmentation.crop_padding": ("paper", {}, {"augmentation": {"crop_padding": 2}}),
    "augmentation.flip": ("paper", {}, {"augmentation": {"flip": False}}),
    "optimizer.name": ("paper", {"optimizer": {"lr": 0.001}}, {"optimizer": {"name": "adam", "lr": 0.001}}),
    "optimizer.lr": ("paper", {}, {"optimizer": {"lr": 0.05}}),
    "optimizer.momentum": ("paper", {}, {"optimizer": {"momentum": 0.5}}),
    "optimizer.nesterov": ("paper", {}, {"optimizer": {"nesterov": True}}),
    "optimizer.weight_decay": ("paper", {}, {"optimizer": {"weight_decay": 0.01}}),
    "nadam.lr": ("nadam", {}, {"optimizer": {"lr": 0.002}}),
    "nadam.weight_decay": ("nadam", {}, {"optimizer": {"weight_decay": 0.01}}),
    "adam.weight_decay": (
        "paper",
        {"optimizer": {"name": "adam", "lr": 0.001}},
        {"optimizer": {"name": "adam", "lr": 0.001, "weight_decay": 0.01}},
    ),
    "multistep.milestones": (
        "paper",
        schedule(**TWO_MILESTONES),
        schedule(**TWO_MILESTONES | {"milestones": [3, 7]}),
    ),
    "multistep.factors": (
        "paper",
        schedule(**TWO_MILESTONES),
        schedule(**TWO_MILESTONES | {"factors": [0.5, 0.2]}),
    ),
    "step.every": ("paper", schedule(**STEP), schedule(**STEP | {"every": 2})),
    "step.gamma": ("paper", schedule(**STEP), schedule(**STEP | {"gamma": 0.25})),
    "schedule.kind": ("paper", schedule(**STEP | {"kind": "constant"}), schedule(**STEP)),
    "warmup.lr": ("paper", {"warmup": WARMUP}, {"warmup": WARMUP | {"lr": 0.02}}),
    "warmup.iterations": ("paper", {"warmup": WARMUP}, {"warmup": WARMUP | {"iterations": 5}}),
    "warmup.min_depth": ("paper", {"warmup": WARMUP}, {"warmup": WARMUP | {"min_depth": 20}}),
    # milestone 2 and period 1: in epochs, iterations 8 and 4 of the same 16 iterations
    "training.unit (multistep)": (
        "paper",
        {"training": {"duration": 16}, **schedule(kind="multistep", milestones=[2], factors=[0.1])},
        {**EPOCHS, **schedule(kind="multistep", milestones=[2], factors=[0.1])},
    ),
    "training.unit (step)": (
        "paper",
        {"training": {"duration": 16}, **schedule(kind="step", every=1, gamma=0.5)},
        {**EPOCHS, **schedule(kind="step", every=1, gamma=0.5)},
    ),
    "plateau.factor": (
        "paper",
        {**EPOCHS, **schedule(**PLATEAU)},
        {**EPOCHS, **schedule(**PLATEAU | {"factor": 0.2})},
    ),
    "plateau.patience": (
        "paper",
        {**EPOCHS, **schedule(**PLATEAU)},
        {**EPOCHS, **schedule(**PLATEAU | {"patience": 1})},
    ),
    "plateau.min_lr": (
        "paper",
        {**EPOCHS, **schedule(**PLATEAU)},
        {**EPOCHS, **schedule(**PLATEAU | {"min_lr": 0.03})},
    ),
    "training.batch_size": ("paper", {}, {"training": {"batch_size": 32}}),
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_setting_of_the_recipe_changes_the_step_and_the_trainer_follows_it(
    small_prepared, tmp_path, validation, setting
):
    """The reference shows that the setting's new value changes the training within these few steps;
    the trainer must then train what the reference trains with it. A trainer that ignores the setting
    trains what it trained before, which the reference does not."""
    variant, before, after = SETTINGS[setting]
    config = config_of(variant, after)
    expected = reference(config, small_prepared)
    assert not same(reference(config_of(variant, before), small_prepared), expected)
    assert same(trained(config, small_prepared, tmp_path), expected)
