import pytest

from cifar_resnet.schedule import LearningRate


def recipe(schedule, unit="iterations", lr=0.1, warmup=None):
    return {"optimizer": {"lr": lr}, "schedule": schedule, "training": {"unit": unit}, "warmup": warmup}


PAPER = recipe({"kind": "multistep", "milestones": [32000, 48000], "factors": [0.1, 0.01]})


@pytest.mark.parametrize(
    ("iteration", "lr"),
    [(0, 0.1), (31999, 0.1), (32000, 0.01), (47999, 0.01), (48000, 0.001), (63999, 0.001)],
)
def test_paper_schedule_at_its_boundaries(iteration, lr):
    assert LearningRate(PAPER, depth=20, steps_per_epoch=351).at(iteration) == pytest.approx(lr)


def test_warmup_only_for_deep_models():
    warm = recipe(PAPER["schedule"], warmup={"lr": 0.01, "iterations": 400, "min_depth": 110})
    deep = LearningRate(warm, depth=110, steps_per_epoch=351)
    assert deep.at(0) == deep.at(399) == 0.01
    assert deep.at(400) == pytest.approx(0.1)
    assert LearningRate(warm, depth=56, steps_per_epoch=351).at(0) == pytest.approx(0.1)


def test_milestones_in_epochs_are_converted_to_iterations():
    schedule = LearningRate(
        recipe({"kind": "multistep", "milestones": [2], "factors": [0.5]}, unit="epochs"),
        20,
        steps_per_epoch=10,
    )
    assert schedule.at(19) == pytest.approx(0.1)
    assert schedule.at(20) == pytest.approx(0.05)


def test_step_schedule_halves_every_period():
    schedule = LearningRate(recipe({"kind": "step", "every": 20, "gamma": 0.5}, unit="epochs"), 20, 10)
    assert [schedule.at(i) for i in (0, 199, 200, 400, 599)] == pytest.approx([0.1, 0.1, 0.05, 0.025, 0.025])


def test_plateau_reduces_after_patience_and_restores_from_state():
    settings = recipe({"kind": "plateau", "factor": 0.1, "patience": 1, "min_lr": 0.0005}, unit="epochs")
    schedule = LearningRate(settings, 20, 10)
    for accuracy in (0.5, 0.6, 0.6):
        schedule.end_of_epoch(accuracy)
    assert schedule.at(0) == pytest.approx(0.1)  # one epoch without improvement is within patience
    schedule.end_of_epoch(0.59)
    assert schedule.at(0) == pytest.approx(0.01)
    restored = LearningRate(settings, 20, 10)
    restored.load_state_dict(schedule.state_dict())
    for _ in range(4):
        restored.end_of_epoch(0.1)
    assert restored.at(0) == pytest.approx(0.0005)  # floored at min_lr


def test_plateau_counts_patience_afresh_after_each_reduction_and_has_no_floor_unless_given():
    schedule = LearningRate(recipe({"kind": "plateau", "factor": 0.5, "patience": 1}, unit="epochs"), 20, 10)
    rates = []
    for accuracy in (0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4):
        schedule.end_of_epoch(accuracy)
        rates.append(schedule.at(0))
    # the best epoch, then a reduction after every second epoch without improvement
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125, 0.00625])
