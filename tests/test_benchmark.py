"""The benchmark's measurements: its modes are the trainer's, "ours" and the K-model pipelines run the
trainer's own step loop on the study's paper recipe, and packing equals separate training; the rows of a
group take turns in rounds, on equal cores, with steps per repeat derived from their step time."""

import math
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from cifar_resnet import train
from cifar_resnet.benchmark import rounds
from cifar_resnet.benchmark.data import MEAN, STD, synthetic_cifar, synthetic_data
from cifar_resnet.benchmark.jobs import jobs_pipeline
from cifar_resnet.benchmark.modes import ALL_MODES, Mode, packing_mode
from cifar_resnet.benchmark.packing import PackedModels, epoch_chunk, k_model_pipeline
from cifar_resnet.benchmark.pipelines import (
    ClassicalCifar,
    classical_loader,
    classical_pipeline,
    epoch_pieces,
    our_pipeline,
    our_trainer,
)
from cifar_resnet.benchmark.rounds import measure_group, step_seconds, steps_for
from cifar_resnet.benchmark.runner import Bench, classical_threads, job_threads, plan
from cifar_resnet.benchmark.settings import load_settings
from cifar_resnet.benchmark.tables import ratio_to_classical, sharing_comparison
from cifar_resnet.benchmark.timing import Pipeline, Protocol, cpu_seconds
from cifar_resnet.models import ModelSpec, build_model
from cifar_resnet.runtime import Runtime
from cifar_resnet.train import make_optimizer, train_step

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "config" / "config.yaml"
SETTINGS = load_settings(CONFIG)
CPU = torch.device("cpu")
TINY = Protocol(batch_size=8, min_seconds=0.0, rounds=3, warmup_steps=1)  # a repeat of one step


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

    study = load_study(yaml.safe_load(CONFIG.read_text()))
    assert SETTINGS.recipe == study.recipes["paper"]
    assert SETTINGS.runtime == study.config["runtime"]
    assert SETTINGS.batch_size == 128 and SETTINGS.runtime["eval_batch_size"] == 1000  # schema defaults


def test_a_changed_config_changes_the_trainer_the_benchmark_builds(tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    config["recipe"]["optimizer"]["momentum"] = 0.5
    del config["recipe"]["training"]["batch_size"], config["runtime"]
    config["variants"]["paper"]["overrides"] = {"augmentation": {"crop_padding": 2}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    settings = load_settings(tmp_path / "config.yaml")
    assert settings.batch_size == 128 and settings.runtime["compile"] is False  # the schema's defaults
    trainer = our_trainer(8, Mode(), CPU, TINY, synthetic_data(64), settings)
    assert trainer.optimizer.defaults["momentum"] == 0.5 and trainer.batch_size == 8
    assert trainer.recipe["augmentation"] == {"crop_padding": 2, "flip": True}
    config["variants"] = {"plain": config["variants"]["paper"]}
    config["study"]["variants"] = ["plain"]
    config["report"] = {"baseline_variant": "plain"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(Exception, match="defines no 'paper' variant"):
        load_settings(tmp_path / "config.yaml")


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
    (measured,) = measure_group(
        [partial(our_pipeline, 8, Mode(), CPU, TINY, synthetic_data(64), SETTINGS, 1)], TINY, CPU
    )
    assert measured.steps == 1 and len(measured.repeats) == 3 and math.isnan(measured.peak_memory_mb)
    assert all(rate > 0 for rate in measured.images_per_s + measured.images_per_cpu_s)
    # the warm-up, the probe of the step time, then one repeat per round, each in an epoch of its own
    assert [(epoch, steps) for _, epoch, steps in train_steps_calls] == [
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 1),
        (5, 1),
    ]
    trainer = train_steps_calls[0][0]
    assert isinstance(trainer, train.Trainer) and all(call[0] is trainer for call in train_steps_calls)
    assert not trainer.show_progress and trainer.batch_size == 8 and trainer.steps_per_epoch == 8
    assert trainer.runtime == Runtime.resolve({**SETTINGS.runtime, **Mode().switches(), "device": "cpu"}, CPU)
    assert trainer.recipe["optimizer"] == SETTINGS.recipe["optimizer"]
    assert trainer.first_step_seconds is not None  # the trainer timed its first step, as in a job


def test_a_repeat_longer_than_an_epoch_runs_on_into_the_next_epochs(train_steps_calls, restore_threads):
    assert epoch_pieces(20, 8) == [8, 8, 4] and epoch_pieces(16, 8) == [8, 8] and epoch_pieces(3, 8) == [3]
    pipeline = our_pipeline(8, Mode(), CPU, TINY, synthetic_data(64), SETTINGS, 1)
    pipeline.run(20)
    pipeline.run(3)
    assert [(epoch, steps) for _, epoch, steps in train_steps_calls] == [(1, 8), (2, 8), (3, 4), (4, 3)]
    assert pipeline.threads == 1 and pipeline.images_per_step == 8 and pipeline.prefetched == 0


def test_sequential_runs_k_trainers_through_train_steps_on_one_copy_of_the_data(
    train_steps_calls, restore_threads
):
    pipeline = k_model_pipeline(8, 2, CPU, TINY, None, False, synthetic_data(64), SETTINGS, 2)
    assert pipeline.images_per_step == 16 and pipeline.threads == 2
    pipeline.run(2)
    pipeline.run(3)
    first, second = train_steps_calls[0][0], train_steps_calls[1][0]
    expected = [(trainer, epoch, steps) for epoch, steps in [(1, 2), (2, 3)] for trainer in (first, second)]
    assert train_steps_calls == expected
    assert (first.seed, second.seed) == (0, 1) and first.train.images is second.train.images
    assert not torch.equal(first.model.head[0].weight, second.model.head[0].weight)


def test_the_classical_pipeline_counts_its_workers_prefetch(restore_threads):
    pipeline = classical_pipeline(8, CPU, TINY, 2, synthetic_data(64), SETTINGS, 1)
    try:
        assert pipeline.prefetched == 4 and pipeline.threads == 1  # 2 workers x prefetch_factor 2
        pipeline.run(2)
    finally:
        pipeline.close()
    assert classical_pipeline(8, CPU, TINY, 0, synthetic_data(64), SETTINGS, 1).prefetched == 0


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


@pytest.mark.slow  # job processes that import torch
def test_concurrent_jobs_serve_every_repeat_from_a_barrier_until_closed(restore_threads):
    protocol = Protocol(batch_size=8, warmup_steps=1)
    pipeline = jobs_pipeline(8, 2, CPU, protocol, Mode(), synthetic_data(256), SETTINGS, 1)
    try:
        assert pipeline.images_per_step == 16 and pipeline.threads == 1
        spans = [pipeline.run(3), pipeline.run(20)]  # 20 steps of 8 outlast an epoch of 256 images
        assert all(start < end for start, end in spans) and spans[0][1] <= spans[1][0]
        assert math.isnan(pipeline.own_peak_mb())  # not measured on the CPU
    finally:
        pipeline.close()


@pytest.mark.slow  # job processes that import torch
def test_a_failing_concurrent_job_is_reported_instead_of_waited_for():
    protocol = Protocol(batch_size=8, warmup_steps=0)
    with pytest.raises(RuntimeError, match="process .* of 2 failed: ValueError: depth 21"):
        jobs_pipeline(21, 2, CPU, protocol, Mode(), synthetic_data(64), SETTINGS, 1)


class Fake:
    """A pipeline whose steps take ``step`` seconds on the clock it reports (its ``run`` returns the span,
    as the jobs do), and that records every call in ``calls`` as (name, steps)."""

    def __init__(self, name, step, calls, prefetched=0, fail_at=None):
        self.name, self.step, self.calls, self.fail_at = name, step, calls, fail_at
        self.pipeline = Pipeline(
            self.run, 10, CPU, 1, prefetched, close=lambda: calls.append((name, "closed"))
        )

    def run(self, steps):
        self.calls.append((self.name, steps))
        if len(self.calls) == self.fail_at:
            raise RuntimeError("out of memory")
        return 0.0, self.step * steps


def test_steps_per_repeat_last_the_minimum_and_outlast_the_prefetch_many_times():
    assert steps_for(0.01, 1.0, 0) == 100
    assert steps_for(0.3, 1.0, 0) == 4  # rounded up: a repeat lasts at least the minimum
    assert steps_for(2.0, 1.0, 0) == 1
    assert steps_for(0.001, 1.0, 16) == 1000  # the minimum wins
    assert steps_for(0.05, 1.0, 16) == 16 * rounds.PREFETCH_MULTIPLE == 160  # the prefetch wins
    assert steps_for(0.05, 0.0, 0) == 1
    calls = []
    assert step_seconds(Fake("A", 0.01, calls).pipeline, 1.0) == pytest.approx(0.01)
    assert calls == [("A", 1), ("A", 2), ("A", 4), ("A", 8), ("A", 16)]  # until a probe lasts 0.1 s


def test_the_rows_of_a_group_take_turns_round_after_round_after_their_warm_ups():
    calls = []
    fakes = [Fake("A", 0.01, calls), Fake("B", 0.001, calls, prefetched=4), Fake("C", 0.5, calls)]
    protocol = Protocol(batch_size=10, min_seconds=1.0, rounds=3, warmup_steps=2)
    measured = measure_group([partial(lambda fake: fake.pipeline, fake) for fake in fakes], protocol, CPU)
    warm_ups, probes = calls[:3], calls[3:17]
    assert warm_ups == [("A", 2), ("B", 2), ("C", 2)]
    assert probes[4:6] == [("A", 16), ("B", 1)] and probes[-2:] == [("B", 128), ("C", 1)]  # until 0.1 s
    assert calls[17:-3] == [("A", 100), ("B", 1000), ("C", 2)] * 3
    assert calls[-3:] == [("A", "closed"), ("B", "closed"), ("C", "closed")]
    assert [row.steps for row in measured] == [100, 1000, 2]
    assert measured[0].images_per_s == pytest.approx([1000.0] * 3)  # 10 images per 0.01 s step


def test_a_row_that_fails_in_a_round_leaves_the_others_their_rounds():
    calls = []
    fakes = [Fake("A", 0.01, calls), Fake("B", 0.01, calls, fail_at=2 + 2 + 4)]  # B's second round
    measured = measure_group([partial(lambda fake: fake.pipeline, fake) for fake in fakes], TINY, CPU)
    assert measured[1] == "failed: RuntimeError: out of memory"
    assert len(measured[0].repeats) == 3 and calls[-2:] == [("A", "closed"), ("B", "closed")]
    calls.clear()
    fakes = [Fake("A", 0.01, calls, fail_at=1), Fake("B", 0.01, calls)]  # A's warm-up
    measured = measure_group([partial(lambda fake: fake.pipeline, fake) for fake in fakes], TINY, CPU)
    assert measured[0] == "failed: RuntimeError: out of memory" and len(measured[1].repeats) == 3
    assert calls[:2] == [("A", 1), ("A", "closed")] and ("A", 1) not in calls[2:]


SPINNER = """
import time
end = time.process_time() + 0.6
while time.process_time() < end:
    pass
time.sleep(30)
"""


@pytest.mark.slow  # worker processes
def test_cpu_seconds_count_the_live_worker_processes():
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SPINNER,
        ]
    )
    try:
        before = cpu_seconds()
        time.sleep(3.0)  # the child spins for 0.6 s of CPU, then sleeps
        assert cpu_seconds() - before >= 0.3
    finally:
        child.kill()
        child.wait()


def test_rows_compared_with_each_other_use_equal_cores():
    bench = Bench(CPU, "machine", synthetic_data(64), SETTINGS, workers=1, cores=2)
    groups = plan(bench, [8], [Mode()], TINY, Mode(), [1, 2, 4], TINY)
    cores = [{row.keys["pipeline"]: row.keys["cores"] for row in group} for group in groups]
    assert cores[0] == {"ours": 2, "classical": 2}  # 1 thread and 1 worker against 2 threads
    assert cores[1:] == [dict.fromkeys(["packed", "sequential", "jobs"], count) for count in (2, 2, 4)]
    assert [group[0].keys["mode"] for group in groups[1:]] == ["eager, K=1", "eager, K=2", "eager, K=4"]
    assert classical_threads(9, 8) == 1 and classical_threads(2, 2) == 1  # 3 cores then: not paired
    assert (job_threads(9, 8), job_threads(9, 3), job_threads(2, 4)) == (1, 3, 1)


def rows_frame(rows):
    """Rows of (pipeline, depth, mode, cores, images/s in each round) as the runner writes them."""
    frame = pd.DataFrame(rows, columns=["pipeline", "depth", "mode", "cores", "by_round"])
    medians = frame["by_round"].map(lambda figures: statistics.median(figures) if figures else math.nan)
    text = frame["by_round"].map(lambda figures: ";".join(map(str, figures)) if figures else math.nan)
    return frame.drop(columns="by_round").assign(
        images_per_s=medians, images_per_s_by_round=text, images_per_cpu_s_by_round=text
    )


def test_ratio_compares_our_fastest_mode_with_the_classical_pipeline_on_equal_cores_within_rounds():
    frame = rows_frame(
        [
            ("ours", 20, "eager", 2, [300.0, 150.0, 330.0]),
            ("ours", 20, "compile", 2, [900.0, 450.0, 1200.0]),
            ("ours", 20, "eager+bf16", 2, []),
            ("ours", 20, "eager+bf16+channels_last", 4, [5000.0, 5000.0, 5000.0]),  # more cores: unpaired
            ("classical", 20, "eager, 1 workers", 2, [100.0, 50.0, 100.0]),
            ("packed", 20, "eager, K=4", 2, [5000.0, 5000.0, 5000.0]),
            ("ours", 56, "eager", 3, [50.0, 60.0, 40.0]),
            ("classical", 56, "eager, 2 workers", 3, [40.0, 40.0, 40.0]),
            ("ours", 110, "eager", 1, [50.0, 60.0, 40.0]),
            ("classical", 110, "eager, 2 workers", 3, [40.0, 40.0, 40.0]),
        ]
    )
    ratios = ratio_to_classical(frame).set_index("depth")
    assert 110 not in ratios.index  # no row of equal cores to pair
    assert ratios.loc[20, "best_mode"] == "compile" and ratios.loc[20, "cores"] == 2
    # each round's ratio (9, 9, 12): the slow second round moved both rows, and cancels
    assert ratios.loc[20, ["ratio", "ratio_min", "ratio_max"]].tolist() == pytest.approx([9.0, 9.0, 12.0])
    assert ratios.loc[56, ["ratio", "ratio_min", "ratio_max"]].tolist() == pytest.approx([1.25, 1.0, 1.5])
    assert ratios.loc[56, "cpu_ratio"] == pytest.approx(1.25)


def test_sharing_comparison_names_the_fastest_way_to_train_k_models_and_its_margin_within_rounds():
    frame = rows_frame(
        [
            ("packed", 20, "eager+bf16, K=4", 4, [4000.0, 2000.0, 4000.0]),
            ("sequential", 20, "eager+bf16, K=4", 4, [3000.0, 3000.0, 3000.0]),
            ("jobs", 20, "eager+bf16, K=4", 4, [6000.0, 4000.0, 4400.0]),
            ("packed", 20, "eager+bf16, K=1", 4, [1000.0, 1000.0, 1000.0]),
            ("sequential", 20, "eager+bf16, K=1", 4, [1100.0, 1100.0, 1100.0]),
            ("jobs", 20, "eager+bf16, K=1", 4, []),
            ("ours", 20, "eager", 4, [9000.0, 9000.0, 9000.0]),
        ]
    )
    table = sharing_comparison(frame).set_index("K")
    assert table.loc[4, "winner"] == "jobs"  # against the runner-up, packed, round by round
    assert table.loc[4, ["margin", "margin_min", "margin_max"]].tolist() == pytest.approx([1.5, 1.1, 2.0])
    assert table.loc[1, "winner"] == "sequential" and table.loc[1, "margin"] == pytest.approx(1.1)
    assert math.isnan(table.loc[1, "jobs"])
