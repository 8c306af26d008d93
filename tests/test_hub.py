"""cifar_resnet.load_run: a finished run's model, ready to classify uint8 images in one call."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import run, train

import cifar_resnet
from cifar_resnet.datasets import load_prepared
from cifar_resnet.errors import StudyError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished_run(prepared, study, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    train(run(study, "paper", depth=20, duration=4), prepared, folder)  # a depth torch.hub's entries name
    return folder


def test_the_loaded_model_normalises_uint8_images_with_the_training_splits_statistics(finished_run, prepared):
    model = cifar_resnet.load_run(finished_run)
    data = load_prepared(prepared, splits=("test",))
    images = data["test_images"][:16]

    expected = model.model(
        (images.float() / 255 - data["mean"].view(1, 3, 1, 1)) / data["std"].view(1, 3, 1, 1)
    )

    torch.testing.assert_close(model(images), expected, rtol=1e-5, atol=1e-5)
    assert not model.training and model.class_names == data["class_names"]


def test_the_loaded_model_scores_the_runs_test_accuracy(finished_run, prepared):
    model = cifar_resnet.load_run(finished_run)
    data = load_prepared(prepared, splits=("test",))
    evaluation = json.loads((finished_run / "eval.json").read_text())

    with torch.no_grad():
        accuracy = (model(data["test_images"]).argmax(1) == data["test_labels"]).float().mean().item()

    assert accuracy == pytest.approx(evaluation["test_accuracy"], abs=1.5 / len(data["test_labels"]))
    assert model.provenance["test_error"] == evaluation["test_error"]
    assert (model.provenance["variant"], model.provenance["depth"], model.provenance["seed"]) == (
        "paper",
        20,
        0,
    )


def test_the_model_takes_channels_last_and_numpy_images_as_the_same_images(finished_run, prepared):
    model = cifar_resnet.load_run(finished_run)
    images = load_prepared(prepared, splits=("test",))["test_images"][:4]
    with torch.no_grad():
        expected = model(images)
        channels_last = images.permute(0, 2, 3, 1).contiguous()
        torch.testing.assert_close(model(channels_last), expected)
        torch.testing.assert_close(model(channels_last.numpy()), expected)
        torch.testing.assert_close(model(channels_last[0]), expected[:1])  # one [32, 32, 3] image
        torch.testing.assert_close(model(images[0]), expected[:1])  # one [3, 32, 32] image


@pytest.mark.parametrize(
    ("make", "sentence"),
    [
        (
            lambda x: x.float() / 255,
            r"uint8 images with values 0 to 255, not torch.float32: pass them before",
        ),
        (lambda x: x.numpy().astype("float64"), r"not torch.float64"),
        (
            lambda x: torch.nn.functional.interpolate(x.float(), 64).to(torch.uint8),
            r"32×32 images, not 64×64",
        ),
        (lambda x: x[:, :1], r"RGB images \[batch, 3, 32, 32\] .* not a tensor of shape \[4, 1, 32, 32\]"),
        (lambda x: x.tolist(), r"as a tensor or numpy array, not a list"),
    ],
)
def test_the_model_refuses_what_it_would_answer_with_garbage_in_one_sentence(
    finished_run, prepared, make, sentence
):
    model = cifar_resnet.load_run(finished_run)
    images = load_prepared(prepared, splits=("test",))["test_images"][:4]
    with pytest.raises(StudyError, match=sentence):
        model(make(images))


def test_a_folder_that_is_not_a_finished_run_is_one_sentence(finished_run, tmp_path):
    with pytest.raises(StudyError, match=r"nowhere is not a folder: name the folders of finished runs"):
        cifar_resnet.load_run(tmp_path / "nowhere")
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "eval.json").unlink()
    with pytest.raises(StudyError, match=r"run has no eval.json: name the folders of finished runs"):
        cifar_resnet.load_run(run_dir)


def test_weights_of_another_depth_in_a_runs_folder_are_one_sentence(finished_run, study, tmp_path):
    from cifar_resnet.config import Run
    from cifar_resnet.models import ModelSpec, build_model
    from cifar_resnet.tensors import save_tensors

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    resnet8 = build_model(ModelSpec.for_run(study.run_config(Run("demo", "paper", 8, 0)), 10))
    save_tensors(run_dir / "model.pt", resnet8.state_dict())
    with pytest.raises(
        StudyError, match=r"model.pt does not hold the weights of the ResNet-20 \(paper\) its train"
    ):
        cifar_resnet.load_run(run_dir)


def test_a_train_json_without_the_inputs_normalisation_is_refused(finished_run, tmp_path):
    for name in ("model.pt", "eval.json"):
        (tmp_path / name).write_bytes((finished_run / name).read_bytes())
    summary = json.loads((finished_run / "train.json").read_text())
    del summary["normalization"]
    (tmp_path / "train.json").write_text(json.dumps(summary))

    with pytest.raises(StudyError, match="train.json lacks normalization; delete it and run"):
        cifar_resnet.load_run(tmp_path)


def test_importing_the_package_does_not_import_torch():
    code = "import sys, cifar_resnet; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        == "False\n"
    )


@pytest.mark.slow  # a Python process that imports torch
def test_the_readmes_loading_snippet_classifies_with_a_finished_run(finished_run):
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("in Python (PyTorch only):\n\n```python\n", 1)[1].split("```")[0]
    path = '"results/cifar10/runs/paper/resnet20/seed0"'
    assert path in snippet

    printed = subprocess.run(
        [sys.executable, "-c", snippet.replace(path, repr(str(finished_run)))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()

    names = json.loads((finished_run / "eval.json").read_text())["class_names"]
    assert all(name.strip(" '") in names for name in printed[0].strip("[]").split(","))
    assert "'variant': 'paper'" in printed[1]
