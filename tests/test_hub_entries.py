"""hubconf.py's entries as users call them: every variant's untrained network at every depth, as the
workflow builds it, under ``resnet{depth}`` and the dataset's names (``cifar10_resnet20``); a released
model under the dataset's names; bad arguments in one sentence."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from test_train import run, train

from cifar_resnet import models
from cifar_resnet.config import Run, load_study, read_config_file
from cifar_resnet.datasets import load_prepared
from cifar_resnet.errors import StudyError
from cifar_resnet.hub import HUB_DATASETS, HUB_DEPTHS
from cifar_resnet.models import CifarResNet, ModelSpec, build_model, count_parameters
from cifar_resnet.release import MANIFEST, release_runs

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"cifar10": 10, "cifar100": 100}


@pytest.fixture(scope="module")
def hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def real_study():
    return load_study(read_config_file(ROOT / "config" / "config.yaml"))


@pytest.fixture(autouse=True)
def no_release_variable(monkeypatch):
    monkeypatch.delenv("CIFAR_RESNET_RELEASE", raising=False)


def workflow_parameters(study, dataset: str, variant: str, depth: int) -> int:
    """The trainable parameters of the network the training job builds for the run."""
    config = study.run_config(Run(dataset, variant, depth, 0))
    return count_parameters(build_model(ModelSpec.for_run(config, CLASSES[dataset])))


@pytest.mark.parametrize("depth", HUB_DEPTHS)
def test_every_entry_builds_the_workflows_network_of_every_variant(hubconf, real_study, depth, monkeypatch):
    # The networks' shapes are compared, not their random weights, whose drawing takes seconds at depth 110.
    for skipped in (models, torch.nn.Conv2d, torch.nn.Linear):
        monkeypatch.setattr(skipped, "init_weights" if skipped is models else "reset_parameters", no_init)
    for variant in real_study.recipes:
        for dataset in HUB_DATASETS:
            expected = workflow_parameters(real_study, dataset, variant, depth)
            named = getattr(hubconf, f"{dataset}_resnet{depth}")(variant=variant)
            assert count_parameters(named) == expected, (dataset, variant)
        plain = getattr(hubconf, f"resnet{depth}")(variant=variant, dataset="cifar100", pretrained=False)
        assert count_parameters(plain) == workflow_parameters(real_study, "cifar100", variant, depth)


def no_init(*_) -> None:
    """Leaves a layer's weights as allocated."""


def test_torch_hub_builds_the_papers_resnet20_and_resnet110():
    model = torch.hub.load(str(ROOT), "cifar10_resnet20", source="local", pretrained=False)
    assert count_parameters(model) == 269_722  # He et al. 2016, Table 6
    assert type(model) is CifarResNet and model.training and model.spec.num_classes == 10
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)  # float images in, logits out
    resnet110 = torch.hub.load(str(ROOT), "resnet110", source="local")
    assert count_parameters(resnet110) == 1_727_962
    wide = torch.hub.load(str(ROOT), "cifar100_resnet20", source="local", variant="wide")
    assert wide.spec.width == 4 and wide.spec.num_classes == 100


def test_torch_hub_lists_every_entry_with_its_docstring(monkeypatch):
    """torch.hub.list and torch.hub.help read a GitHub repository's hubconf.py (they take no local
    source): here this clone's, under any owner/name."""
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: str(ROOT))
    repository = "someone/cifar-resnet"
    names = [f"resnet{depth}" for depth in HUB_DEPTHS] + [
        f"{dataset}_resnet{depth}" for dataset in HUB_DATASETS for depth in HUB_DEPTHS
    ]
    assert sorted(torch.hub.list(repository)) == sorted(names)
    for name in names:
        doc = torch.hub.help(repository, name)
        depth = name.rsplit("resnet", 1)[1]
        assert doc.startswith(f"He et al.'s ResNet-{depth} (") and f'"{name}"' in doc
        assert "pretrained=False" in doc and "float images" in doc and "uint8 RGB images" in doc
    assert "cifar10 or cifar100" in torch.hub.help(repository, "resnet20")
    assert "(100)" in torch.hub.help(repository, "cifar100_resnet56")


@pytest.mark.parametrize(
    ("entry", "arguments", "sentence"),
    [
        (
            "resnet20",
            {"variant": "huge"},
            r"There is no variant 'huge' in .*config.yaml; choose one of paper, ",
        ),
        ("resnet20", {"dataset": "imagenet"}, r"unknown dataset 'imagenet'; choose one of cifar10, cifar100"),
        (
            "cifar10_resnet20",
            {"pretrained": True},
            r"pretrained=True loads a released model: name the release",
        ),
        ("cifar10_resnet20", {"pretrained": False, "release": "http://x/manifest.json"}, r"needs no release"),
    ],
)
def test_bad_arguments_are_one_sentence(entry, arguments, sentence):
    with pytest.raises(StudyError, match=sentence):
        torch.hub.load(str(ROOT), entry, source="local", **arguments)


@pytest.fixture(scope="module")
def cifar10_run(prepared, study, tmp_path_factory):
    """A finished run recorded as CIFAR-10's (trained on the demo's images, ten classes too)."""
    folder = tmp_path_factory.mktemp("cifar10-run")
    torch.set_num_threads(1)
    train({**run(study, "paper", depth=20, duration=4), "dataset": "cifar10"}, prepared, folder)
    return folder


def test_a_released_model_loads_under_the_datasets_name_with_the_runs_accuracy(
    cifar10_run, prepared, served, tmp_path, monkeypatch
):
    folder, url = served
    release_runs([cifar10_run], folder / "v1", repository="someone/cifar-resnet")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    manifest_url = f"{url}/v1/{MANIFEST}"
    data = load_prepared(prepared, splits=("test",))
    evaluation = json.loads((cifar10_run / "eval.json").read_text())

    for entry, arguments in [
        ("cifar10_resnet20", {"pretrained": True, "release": manifest_url}),
        ("cifar10_resnet20", {"release": manifest_url}),  # a named release: pretrained
        ("resnet20", {"dataset": "cifar10", "pretrained": True, "release": manifest_url}),
    ]:
        model = torch.hub.load(str(ROOT), entry, source="local", **arguments)
        with torch.no_grad():
            accuracy = (model(data["test_images"]).argmax(1) == data["test_labels"]).float().mean().item()
        assert accuracy == pytest.approx(evaluation["test_accuracy"], abs=1.5 / len(data["test_labels"]))
        assert model.provenance["dataset"] == "cifar10" and model.provenance["variant"] == "paper"
    monkeypatch.setenv("CIFAR_RESNET_RELEASE", manifest_url)
    assert hasattr(torch.hub.load(str(ROOT), "cifar10_resnet20", source="local"), "provenance")
    assert (
        type(torch.hub.load(str(ROOT), "cifar10_resnet20", source="local", pretrained=False)) is CifarResNet
    )
