"""The benchmark's measurements: its modes are the trainer's, "ours" and the K-model pipelines run the
trainer's own step loop on the study's paper recipe, and packing equals separate training."""

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from cifar_resnet import train
from cifar_resnet.benchmark.data import MEAN, STD, synthetic_cifar, synthetic_data
from cifar_resnet.benchmark.jobs import run_concurrent_jobs
from cifar_resnet.benchmark.modes import ALL_MODES, Mode, packing_mode
from cifar_resnet.benchmark.packing import PackedModels, epoch_chunk, packed_throughput
from cifar_resnet.benchmark.pipelines import (
    ClassicalCifar,
    classical_loader,
    our_step_throughput,
    our_trainer,
)
from cifar_resnet.benchmark.settings import load_settings
from cifar_resnet.benchmark.tables import ratio_to_classical, sharing_comparison
from cifar_resnet.benchmark.timing import Protocol
from cifar_resnet.models import ModelSpec, build_model
from cifar_resnet.runtime import Runtime
from cifar_resnet.train import make_optimizer, train_step

ROOT = Path(__file__).parents[1]
CONFIG, SCHEMA = ROOT / "config" / "config.yaml", ROOT / "workflow" / "schemas" / "config.schema.yaml"
SETTINGS = load_settings(CONFIG, SCHEMA)
CPU = torch.device("cpu")
TINY = Protocol(batch_size=8, steps=2, repeats=2, warmup_steps=1)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def train_steps_calls(monkeypatch):
    """The calls of ``train.train_steps`` as (trainer, epoch, steps), each still run."""
    calls, original = [], train.train_steps

    def spy(trainer, epoch, steps):
        calls.append((trainer, epoch, steps))
        return original(trainer, epoch, steps)

    monkeypatch.setattr(train, "train_steps", spy)
    return calls


def test_the_recipe_is_the_study_configs_paper_variant_with_the_schemas_defaults():
    from cifar_resnet.config import load_study

    study = load_study(yaml.safe_load(CONFIG.read_text()), SCHEMA)
    assert SETTINGS.recipe == study.recipes["paper"]
    assert SETTINGS.runtime == study.config["runtime"]
    assert SETTINGS.batch_size == 128 and SETTINGS.runtime["eval_batch_size"] == 1000  # schema defaults


def test_a_changed_config_changes_the_trainer_the_benchmark_builds(tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    config["recipe"]["optimizer"]["momentum"] = 0.5
    del config["recipe"]["training"]["batch_size"], config["runtime"]
    config["variants"]["paper"]["overrides"] = {"augmentation": {"crop_padding": 2}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    settings = load_settings(tmp_path / "config.yaml", SCHEMA)
    assert settings.batch_size == 128 and settings.runtime["compile"] is False  # the schema's defaults
    trainer = our_trainer(8, Mode(), CPU, TINY, synthetic_data(64), settings)
    assert trainer.optimizer.defaults["momentum"] == 0.5 and trainer.batch_size == 8
    assert trainer.recipe["augmentation"] == {"crop_padding": 2, "flip": True}
    del config["variants"]["paper"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(Exception, match="defines no 'paper' variant"):
        load_settings(tmp_path / "config.yaml", SCHEMA)


def test_mode_names_round_trip_and_bad_names_are_refused():
    assert len(set(ALL_MODES)) == 12
    for name in ALL_MODES:
        assert Mode.parse(name).name == name
    assert Mode.parse("compile+channels_last+bf16") == Mode(compile=True, bf16=True, channels_last=True)
    for bad in ("eager+cuda_graphs", "fast", "eager+fp16", "eager+bf16+bf16"):
        with pytest.raises(ValueError):
            Mode.parse(bad)
    assert packing_mode(None, torch.device("cuda")) == Mode(bf16=True)
    assert packing_mode(None, CPU) == Mode()
    assert packing_mode("compile+bf16", CPU) == Mode(compile=True, bf16=True)
    for unsupported in ("eager+channels_last", "compile+cuda_graphs"):
        with pytest.raises(ValueError):
            packing_mode(unsupported, CPU)


def test_a_mode_runs_where_the_trainer_applies_its_switches_so_only_eager_on_the_cpu():
    cuda = torch.device("cuda")
    on_cpu = {**SETTINGS.runtime, "switches_on_cpu": True}
    for name in ALL_MODES:
        assert Mode.parse(name).unavailable_on(cuda, SETTINGS.runtime) is None
        # The trainer runs eager fp32 NCHW.
        switches = Runtime.resolve(Mode.parse(name).runtime(SETTINGS.runtime, CPU), CPU)
        with switches.autocast():
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert switches.memory_format == torch.contiguous_format and not switches.compile
        graphs = Mode.parse(name).cuda_graphs  # the one switch that stays on CUDA under switches_on_cpu
        assert (Mode.parse(name).unavailable_on(CPU, on_cpu) is None) is not graphs, name
    assert ALL_MODES[0] == "eager" and Mode().unavailable_on(CPU, SETTINGS.runtime) is None
    for name in ALL_MODES[1:]:
        assert Mode.parse(name).unavailable_on(CPU, SETTINGS.runtime).startswith("n/a on cpu"), name
    compiled = Mode(compile=True).unavailable_on(CPU, SETTINGS.runtime)
    assert compiled == "n/a on cpu (the trainer does not apply compile there)"
    both = Mode(bf16=True, channels_last=True).unavailable_on(CPU, SETTINGS.runtime)
    assert both == "n/a on cpu (the trainer does not apply bf16, channels_last there)"
    graphed = Mode(compile=True, cuda_graphs=True).unavailable_on(CPU, on_cpu)
    assert graphed == "n/a on cpu (the trainer does not apply cuda_graphs there)"


def test_ours_times_a_real_trainer_through_the_trainers_own_step_loop(train_steps_calls, restore_threads):
    torch.set_num_threads(1)
    measured = our_step_throughput(8, Mode(), CPU, TINY, synthetic_data(64), SETTINGS)
    assert measured.images_per_s > 0 and measured.repeats == 2 and math.isnan(measured.peak_memory_mb)
    assert [(epoch, steps) for _, epoch, steps in train_steps_calls] == [(1, 1), (2, 2), (3, 2)]
    trainer = train_steps_calls[0][0]
    assert isinstance(trainer, train.Trainer) and all(call[0] is trainer for call in train_steps_calls)
    assert not trainer.show_progress and trainer.batch_size == 8 and trainer.steps_per_epoch == 8
    assert trainer.runtime == Runtime.resolve({**SETTINGS.runtime, **Mode().switches(), "device": "cpu"}, CPU)
    assert trainer.recipe["optimizer"] == SETTINGS.recipe["optimizer"]
    assert trainer.first_step_seconds is not None  # the trainer timed its first step, as in a job
    too_long = Protocol(batch_size=8, steps=3, warmup_steps=1)
    with pytest.raises(ValueError, match="3 steps of 8 need 24 images; the data set has 16"):
        our_step_throughput(8, Mode(), CPU, too_long, synthetic_data(16), SETTINGS)


def test_sequential_runs_k_trainers_through_train_steps_on_one_copy_of_the_data(
    train_steps_calls, restore_threads
):
    torch.set_num_threads(1)
    measured = packed_throughput(8, 2, CPU, TINY, None, False, synthetic_data(64), SETTINGS)
    assert measured.images_per_s > 0
    first, second = train_steps_calls[0][0], train_steps_calls[1][0]
    expected = [
        (trainer, epoch, steps) for epoch, steps in [(1, 1), (2, 2), (3, 2)] for trainer in (first, second)
    ]
    assert train_steps_calls == expected
    assert (first.seed, second.seed) == (0, 1) and first.train.images is second.train.images
    assert not torch.equal(first.model.head[0].weight, second.model.head[0].weight)


def test_classical_dataset_returns_the_pil_image_of_the_nchw_array():
    images, labels = synthetic_cifar(4)
    dataset = classical_loader(images, labels, 2, 0, CPU, SETTINGS.recipe["augmentation"]).dataset
    assert isinstance(dataset, ClassicalCifar)
    dataset.transform = lambda image: image
    image, label = dataset[3]
    assert isinstance(image, Image.Image) and image.size == (32, 32) and image.mode == "RGB"
    assert image.getpixel((5, 2)) == tuple(images[3, :, 2, 5].tolist())  # PIL indexes (x, y)
    assert label == int(labels[3]) and isinstance(label, int)


def test_classical_batches_are_normalized_float_crops_of_the_padded_images():
    assert SETTINGS.recipe["augmentation"]["crop_padding"] == 4
    images = torch.empty(64, 3, 32, 32, dtype=torch.uint8)
    images[:, 0], images[:, 1], images[:, 2] = 255, 128, 0
    labels = torch.arange(64) % 10
    torch.manual_seed(0)  # the transforms draw from the global generator
    loader = classical_loader(images, labels, 32, 0, CPU, SETTINGS.recipe["augmentation"])
    batch, batch_labels = next(iter(loader))
    assert batch.shape == (32, 3, 32, 32) and batch.dtype == torch.float32
    assert batch_labels.shape == (32,) and batch_labels.dtype == torch.int64
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    expected = (torch.tensor([255, 128, 0]).float()[:, None, None] / 255 - mean) / std
    centre = batch[:, :, 4:28, 4:28]  # never padding: a crop shifts by at most 4 pixels
    torch.testing.assert_close(centre, expected.expand_as(centre))
    corners = batch[:, :, 0, 0]  # the top-left pixel comes from the image or from the zero padding
    from_image = torch.isclose(corners, expected.flatten()).all(dim=1)
    from_padding = torch.isclose(corners, (-mean / std).flatten()).all(dim=1)
    assert (from_image | from_padding).all() and from_padding.any() and from_image.any()


def test_epoch_chunk_gives_each_model_its_own_order_with_matching_labels():
    count, augmentation = 256, SETTINGS.recipe["augmentation"]
    images = torch.arange(count, dtype=torch.uint8)[:, None, None, None].expand(count, 3, 32, 32).contiguous()
    labels = torch.arange(count)
    chunk, chunk_labels = epoch_chunk(
        images, labels, 3, 4, 16, augmentation, torch.Generator().manual_seed(0)
    )
    assert chunk.shape == (3, 64, 3, 32, 32) and chunk_labels.shape == (3, 64)
    assert torch.equal(chunk[:, :, 0, 16, 16].long(), chunk_labels)  # the centre survives crop and flip
    assert len({tuple(order.tolist()) for order in chunk_labels}) == 3
    assert all(len(set(order.tolist())) == 64 for order in chunk_labels)  # without replacement
    with pytest.raises(ValueError):
        epoch_chunk(images, labels, 1, 17, 16, augmentation, torch.Generator())


def test_packed_step_of_two_models_equals_two_ordinary_steps():
    torch.manual_seed(0)
    models = [build_model(ModelSpec(8)) for _ in range(2)]
    separate = [build_model(ModelSpec(8)) for _ in range(2)]
    for copy, model in zip(separate, models, strict=True):
        copy.load_state_dict(model.state_dict())
    run_time = Runtime.resolve(Mode().runtime(SETTINGS.runtime, CPU), CPU)
    optimizer_settings = SETTINGS.recipe["optimizer"]
    packed = PackedModels(models, run_time, optimizer_settings)
    optimizers = [make_optimizer(model.parameters(), optimizer_settings, run_time) for model in separate]
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    images, labels = synthetic_cifar(2 * 2 * 8, seed=1)
    images, labels = images.view(2, 2, 8, 3, 32, 32), labels.view(2, 2, 8)
    for step in range(2):  # the second step exercises momentum
        losses, _ = packed.step(images[step], labels[step], mean, std)
        for k, (model, optimizer) in enumerate(zip(separate, optimizers, strict=True)):
            loss, _ = train_step(model, optimizer, images[step, k], labels[step, k], mean, std, run_time)
            torch.testing.assert_close(losses[k], loss)
    for k, model in enumerate(separate):
        state = packed.state_dict_of(k)
        assert state.keys() == model.state_dict().keys()
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(state[name], tensor, rtol=1e-4, atol=1e-5, msg=f"model {k}: {name}")
    heads = [packed.state_dict_of(k)["head.0.weight"] for k in range(2)]
    assert not torch.allclose(*heads)
    assert packed.state_dict_of(1)["backbone.1.num_batches_tracked"] == 2


def test_concurrent_jobs_run_their_timed_repeats_at_the_same_time(restore_threads):
    torch.set_num_threads(1)
    protocol = Protocol(batch_size=8, steps=3, repeats=2, warmup_steps=1)
    spans, peaks = run_concurrent_jobs(8, 2, CPU, protocol, Mode(), synthetic_data(256), SETTINGS)
    assert [len(job) for job in spans] == [2, 2]
    for (first_start, first_end), (second_start, second_end) in zip(*spans, strict=True):
        assert first_start < second_end and second_start < first_end, "a repeat did not overlap"
    assert all(math.isnan(peak) for peak in peaks)  # not measured on the CPU


def test_a_failing_concurrent_job_is_reported_instead_of_waited_for():
    protocol = Protocol(batch_size=8, steps=1, repeats=1, warmup_steps=0)
    with pytest.raises(RuntimeError, match="process .* of 2 failed: ValueError: depth 21"):
        run_concurrent_jobs(21, 2, CPU, protocol, Mode(), synthetic_data(64), SETTINGS)


def test_ratio_compares_our_fastest_measured_mode_with_the_classical_pipeline():
    rows = [
        ("ours", 20, "eager", 300.0),
        ("ours", 20, "compile", 900.0),
        ("ours", 20, "eager+bf16", float("nan")),
        ("classical", 20, "eager, 2 workers", 100.0),
        ("packed", 20, "eager, K=4", 5000.0),
        ("ours", 56, "eager", 50.0),
        ("classical", 56, "eager, 2 workers", 40.0),
    ]
    frame = pd.DataFrame(rows, columns=["pipeline", "depth", "mode", "images_per_s"])
    ratios = ratio_to_classical(frame).set_index("depth")
    assert ratios.loc[20, "best_mode"] == "compile" and ratios.loc[20, "ratio"] == pytest.approx(9.0)
    assert ratios.loc[56, "best_mode"] == "eager" and ratios.loc[56, "ratio"] == pytest.approx(1.25)


def test_sharing_comparison_names_the_fastest_way_to_train_k_models_and_its_margin():
    rows = [
        ("packed", 20, "eager+bf16, K=4", 4000.0),
        ("sequential", 20, "eager+bf16, K=4", 3000.0),
        ("jobs", 20, "eager+bf16, K=4", 6000.0),
        ("packed", 20, "eager+bf16, K=1", 1000.0),
        ("sequential", 20, "eager+bf16, K=1", 1100.0),
        ("jobs", 20, "eager+bf16, K=1", float("nan")),
        ("ours", 20, "eager", 9000.0),
    ]
    frame = pd.DataFrame(rows, columns=["pipeline", "depth", "mode", "images_per_s"])
    table = sharing_comparison(frame).set_index("K")
    assert table.loc[4, "winner"] == "jobs" and table.loc[4, "margin"] == pytest.approx(1.5)
    assert table.loc[1, "winner"] == "sequential" and table.loc[1, "margin"] == pytest.approx(1.1)
    assert math.isnan(table.loc[1, "jobs"])
