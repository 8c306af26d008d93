"""Deployment: the ONNX export of every variant agrees with PyTorch, INT8 is calibrated on the training
split only, latency is measured and recorded with its machine, and broken inputs give one sentence."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from test_config import demo_config
from test_summary import train_record

from cifar_resnet import datasets, latency, quantize
from cifar_resnet.config import load_study
from cifar_resnet.deploy import deploy_run
from cifar_resnet.errors import StudyError
from cifar_resnet.export import (
    INPUT_FORMAT,
    DeployedModel,
    agreement,
    check_agreement,
    export_onnx,
    onnx_logits,
    onnx_session,
    torch_logits,
)
from cifar_resnet.files import write_json
from cifar_resnet.models import ModelSpec, build_model
from cifar_resnet.tensors import load_tensors, save_tensors

TOLERANCE = {"max_relative_logit_difference": 1e-4, "min_top1_agreement": 0.999}
LATENCY = {"runs": 3, "warmup_runs": 1, "batch_size": 8}
DEPLOY = {"tolerance": TOLERANCE, "calibration_images": 64, "latency": LATENCY}


def with_trained_statistics(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Batch-norm statistics and affine weights away from their initial 0/1, so that folding them into
    the convolutions is exercised (the initial values fold to an identity)."""
    generator = torch.Generator().manual_seed(seed)
    for layer in model.modules():
        if isinstance(layer, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            size = layer.num_features
            layer.running_mean.copy_(0.2 * torch.randn(size, generator=generator))
            layer.running_var.copy_(0.5 + torch.rand(size, generator=generator))
            layer.weight.data.copy_(0.5 + torch.rand(size, generator=generator))
            layer.bias.data.copy_(0.1 * torch.randn(size, generator=generator))
    return model.eval()


def variant_specs(study, depth: int) -> dict[ModelSpec, list[str]]:
    """Each distinct model of the study's variants at ``depth`` with the variants that train it."""
    specs = {}
    for name in study.variants:
        spec = ModelSpec(depth=depth, **study.recipes[name]["model"])
        specs.setdefault(spec, []).append(name)
    return specs


def test_the_variants_train_six_distinct_models():
    specs = variant_specs(load_study(demo_config()), 8)
    # shortcut A and B, pre-activation, the three heads and the width; frozen and finetune are paper's model
    assert len(specs) == 6 and {"paper", "frozen", "finetune"} <= set(specs[ModelSpec(depth=8)])


# ResNet-8 has one block of each kind (identity and downsampling shortcut) per stage, ResNet-14 repeats them
@pytest.mark.parametrize("depth", [8, pytest.param(14, marks=pytest.mark.slow)])
@pytest.mark.parametrize("index", range(6))
def test_every_variants_export_agrees_with_pytorch(study, depth, index, tmp_path):
    images = torch.randint(
        0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
    spec, variants = list(variant_specs(study, depth).items())[index]
    model = DeployedModel(with_trained_statistics(build_model(spec), seed=index), mean, std).eval()
    path = tmp_path / f"{index}.onnx"
    export_onnx(model, path)
    measured = agreement(
        torch_logits(model, images), onnx_logits(onnx_session(path, threads=1), images.numpy())
    )
    assert measured["top1_agreement"] == 1.0, variants
    check_agreement(measured, TOLERANCE, path)


def test_the_exported_model_takes_any_batch_of_uint8_images(tmp_path):
    inner = with_trained_statistics(build_model(ModelSpec(depth=8)), 0)
    model = DeployedModel(inner, torch.zeros(3), torch.ones(3)).eval()
    export_onnx(model, tmp_path / "model.onnx")
    session = onnx_session(tmp_path / "model.onnx", threads=1)
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert session.get_inputs()[0].shape == ["batch", 3, 32, 32]
    described = onnx.load(tmp_path / "model.onnx")  # the contract, for tools that show a model's inputs
    assert described.graph.input[0].doc_string == INPUT_FORMAT and INPUT_FORMAT in described.doc_string
    for batch in (1, 7):
        images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
        assert onnx_logits(session, images.numpy()).shape == (batch, 10)


def test_the_folded_normalisation_is_the_training_one():
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    inner = build_model(ModelSpec(depth=8)).eval()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    expected = inner((images.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    torch.testing.assert_close(DeployedModel(inner, mean, std)(images), expected, rtol=1e-5, atol=1e-5)


def test_an_export_beyond_the_tolerance_fails_in_one_sentence(tmp_path):
    reference = np.array([[20.0, 10.0], [0.0, 10.0]])
    check_agreement(agreement(reference, reference + 1.5e-3), TOLERANCE, tmp_path / "model.onnx")
    with pytest.raises(
        StudyError,
        match=r"model.onnx disagrees .* largest logit difference 0.003, 0.00015 of the largest logit",
    ) as error:
        check_agreement(agreement(reference, reference + 3e-3), TOLERANCE, tmp_path / "model.onnx")
    assert error.value.args[0].count(". ") == 0
    flipped = reference[:, ::-1]
    with pytest.raises(StudyError, match=r"top-1 agreement 0.0000 \(at least 0.999 required\)"):
        check_agreement(
            agreement(reference, flipped), {**TOLERANCE, "max_relative_logit_difference": 10}, tmp_path
        )


@pytest.fixture(scope="module")
def run_files(prepared, study, tmp_path_factory):
    """A run's model.pt and train.json as training writes them, for a ResNet-8 of the paper recipe."""
    folder = tmp_path_factory.mktemp("run")
    run_config = {"depth": 8, "recipe": study.recipes["paper"]}
    model = with_trained_statistics(build_model(ModelSpec.for_run(run_config, 10)), seed=0)
    save_tensors(folder / "model.pt", model.state_dict())
    data = load_tensors(prepared)
    record = train_record(
        "paper",
        8,
        0,
        dataset="demo",
        config=run_config,
        model=vars(ModelSpec.for_run(run_config, 10)),
        normalization={"mean": data["mean"].tolist(), "std": data["std"].tolist()},
        class_names=data["class_names"],
    )
    write_json(folder / "train.json", record)
    return folder


def deploy(run_files, prepared, folder, int8=True, deploy=DEPLOY, model="model.pt", threads=2) -> dict:
    """``deploy_run`` of ``run_files``' model into ``folder``, as the deployment job runs it."""
    return deploy_run(
        run_files / "train.json",
        run_files / model,
        prepared,
        folder / "model.onnx",
        folder / "model.int8.onnx" if int8 else None,
        folder / "deploy.json",
        deploy,
        threads,
    )


@pytest.fixture(scope="module")
def deployed(run_files, prepared):
    return run_files, deploy(run_files, prepared, run_files)


def test_deploy_run_writes_both_models_their_checks_and_latencies(deployed):
    folder, record = deployed
    assert json.loads((folder / "deploy.json").read_text()) == record
    assert record["onnx_top1_agreement"] >= TOLERANCE["min_top1_agreement"]
    assert record["num_test_images"] == 100
    assert 0 < record["timings"]["deploy_seconds"] < record["timings"]["job_seconds"]
    assert record["int8_error_difference"] == pytest.approx(
        record["int8_test_error"] - record["onnx_test_error"]
    )
    # the INT8 file holds 8-bit weights: well under half the float file
    assert (folder / "model.int8.onnx").stat().st_size < 0.5 * (folder / "model.onnx").stat().st_size
    for engine in ("onnx", "int8", "eager"):
        for setting in ("b1", "batch"):
            assert 0 < record[f"{engine}_{setting}_ms"] <= record[f"{engine}_{setting}_p90_ms"]
    assert record["cpu"] and record["logical_cores"] >= 1 and record["latency_threads"] == 2
    assert record["onnx_bytes"] == (folder / "model.onnx").stat().st_size
    assert record["int8_bytes"] == (folder / "model.int8.onnx").stat().st_size


def test_int8_is_calibrated_on_training_images_only(run_files, prepared, tmp_path, monkeypatch):
    calibrated = []

    def record_calibration(float_path, int8_path, images):
        calibrated.append(images)
        shutil.copy(float_path, int8_path)

    monkeypatch.setattr(quantize, "quantize_int8", record_calibration)
    report = deploy(run_files, prepared, tmp_path)
    (images,) = calibrated
    data = datasets.load_prepared(prepared, splits=("train", "val", "test"))
    rows = {
        split: {image.tobytes() for image in data[f"{split}_images"].numpy()}
        for split in ("train", "val", "test")
    }
    assert len(images) == DEPLOY["calibration_images"]
    assert all(image.tobytes() in rows["train"] for image in images)
    assert not any(image.tobytes() in rows["val"] | rows["test"] for image in images)
    assert report["calibration"]["split"] == "train"
    np.testing.assert_array_equal(data["train_images"][report["calibration"]["indices"]].numpy(), images)


def test_calibration_draws_distinct_images_the_same_for_every_run():
    first, second = quantize.calibration_indices(100, 30), quantize.calibration_indices(100, 30)
    assert torch.equal(first, second) and len(set(first.tolist())) == 30 and int(first.max()) < 100


def test_without_int8_its_figures_are_empty(run_files, prepared, tmp_path):
    record = deploy(run_files, prepared, tmp_path, int8=False, threads=1)
    assert record["int8_b1_ms"] is None and record["int8_bytes"] is None and record["int8_test_error"] is None
    assert record["onnx_b1_ms"] > 0 and not (tmp_path / "model.int8.onnx").exists()


def test_a_corrupt_model_file_is_named_in_one_sentence(run_files, deployed, prepared, tmp_path):
    (tmp_path / "broken.pt").write_bytes((run_files / "model.pt").read_bytes()[:200])
    with pytest.raises(StudyError, match=r"broken.pt is truncated or not a torch checkpoint"):
        deploy(run_files, prepared, tmp_path, model=tmp_path / "broken.pt")
    assert not list(tmp_path.glob("*.onnx")) and not (tmp_path / "deploy.json").exists()

    folder, _ = deployed
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes((folder / "model.onnx").read_bytes()[:300])
    with pytest.raises(
        StudyError, match=r"model.onnx is not a model onnxruntime can load \(.*\); export it again\.$"
    ):
        onnx_session(onnx, threads=1)
    with pytest.raises(StudyError, match=r"missing.onnx is missing; run that run's export first\."):
        onnx_session(tmp_path / "missing.onnx", threads=1)


def test_a_latency_batch_larger_than_the_test_split_is_refused_before_the_export(
    run_files, prepared, tmp_path
):
    too_large = {**DEPLOY, "latency": {**LATENCY, "batch_size": 101}}
    with pytest.raises(StudyError, match=r"batch_size is 101, more than the 100 images of the test split"):
        deploy(run_files, prepared, tmp_path, deploy=too_large)
    assert not list(tmp_path.iterdir())


def test_batch_one_runs_on_one_thread_and_the_batch_on_the_jobs_threads(deployed, monkeypatch):
    timed = []

    def record(path, images, threads, runs, warmup_runs):
        timed.append((path.name, len(images), threads, runs, warmup_runs))
        return {"median_ms": 1.0, "p90_ms": 2.0}

    monkeypatch.setattr(latency, "onnx_latency", record)
    folder, _ = deployed
    images = torch.zeros(100, 3, 32, 32, dtype=torch.uint8)
    model = DeployedModel(build_model(ModelSpec(8)), torch.zeros(3), torch.ones(3)).eval()
    latency.measure_latency(
        model, folder / "model.onnx", folder / "model.int8.onnx", images, LATENCY, threads=3
    )
    assert sorted(timed) == sorted(
        (name, batch, threads, 3, 1)
        for name in ("model.onnx", "model.int8.onnx")
        for batch, threads in ((1, 1), (8, 3))
    )
