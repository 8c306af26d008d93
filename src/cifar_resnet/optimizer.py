"""The optimizer a recipe names, in the implementation the runtime picks for the device.

The updates are torch.optim's functional ones (``torch.optim.sgd.sgd``, ``adam.adam``, ``nadam.nadam``),
called as torch.optim.SGD, Adam and NAdam call them, so the arithmetic is theirs; only the
per-parameter state around them is kept here. The reason is a job's start-up: constructing a
``torch.optim.Optimizer`` and its first step import torch._dynamo, 0.9 s of a CPU job that trains
for 5 s (measured on a 2-core Xeon); the functional updates import it only under compilation."""

from __future__ import annotations

import torch
from torch.optim.adam import adam
from torch.optim.nadam import nadam
from torch.optim.sgd import sgd

from cifar_resnet.errors import StudyError
from cifar_resnet.runtime import optimizer_implementation

# torch.optim's defaults for what a recipe does not set.
BETAS = (0.9, 0.999)
EPS = 1e-8
NADAM_MOMENTUM_DECAY = 4e-3
FUSABLE = {"sgd": True, "adam": True, "nadam": False}  # NAdam has no fused implementation
# State that torch.optim keeps on the CPU unless the update is fused (a kernel launch per scalar
# would cost more on a GPU than the update).
HOST_SCALARS = ("step", "mu_product")


class Optimizer:
    """SGD, Adam or NAdam over one parameter group. ``param_groups[0]["lr"]`` is the lr of the next
    step (the schedule sets it before each step) and ``defaults`` names the implementation, "fused"
    or "foreach", as torch.optim's optimizers do."""

    def __init__(self, parameters, settings: dict, implementation: dict):
        self.settings = settings
        self.implementation = {"foreach": implementation.get("foreach"), "fused": implementation.get("fused")}
        self.fused = bool(self.implementation["fused"])
        self.params = list(parameters)
        self.defaults = {**settings, **implementation}
        self.param_groups = [{"params": self.params, "lr": settings["lr"]}]
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        """Gradients set to None, so that the next backward writes them instead of adding to them."""
        for parameter in self.params:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        updated = [k for k, parameter in enumerate(self.params) if parameter.grad is not None]
        params = [self.params[k] for k in updated]
        grads = [parameter.grad for parameter in params]
        states = [self.state[k] for k in updated]
        lr = self.param_groups[0]["lr"]
        if self.settings["name"] == "sgd":
            self.sgd_step(params, grads, states, lr)
        else:
            self.adam_step(params, grads, states, lr)

    def sgd_step(self, params, grads, states, lr: float) -> None:
        momentum = self.settings["momentum"]
        buffers = [state.get("momentum_buffer") for state in states]
        sgd(
            params,
            grads,
            buffers,  # the update fills in the buffers of a first step
            weight_decay=self.settings["weight_decay"],
            momentum=momentum,
            lr=lr,
            dampening=0.0,
            nesterov=self.settings["nesterov"],
            maximize=False,
            **self.implementation,
        )
        if momentum:
            for state, buffer in zip(states, buffers, strict=True):
                state["momentum_buffer"] = buffer

    def adam_step(self, params, grads, states, lr: float) -> None:
        for parameter, state in zip(params, states, strict=True):
            if not state:
                state.update(self.initial_state(parameter))
        moments = {
            "exp_avgs": [state["exp_avg"] for state in states],
            "exp_avg_sqs": [state["exp_avg_sq"] for state in states],
        }
        steps = [state["step"] for state in states]
        hyper = {"beta1": BETAS[0], "beta2": BETAS[1], "lr": lr, "eps": EPS, "maximize": False}
        hyper["weight_decay"] = self.settings["weight_decay"]
        if self.settings["name"] == "adam":
            adam(
                params,
                grads,
                **moments,
                max_exp_avg_sqs=[],
                state_steps=steps,
                amsgrad=False,
                **hyper,
                **self.implementation,
            )
        else:
            nadam(
                params,
                grads,
                **moments,
                mu_products=[state["mu_product"] for state in states],
                state_steps=steps,
                momentum_decay=NADAM_MOMENTUM_DECAY,
                foreach=self.implementation["foreach"],
                **hyper,
            )

    def initial_state(self, parameter: torch.Tensor) -> dict[str, torch.Tensor]:
        state = {
            "step": torch.zeros((), dtype=torch.float32, device=self.device_of("step", parameter)),
            "exp_avg": torch.zeros_like(parameter, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(parameter, memory_format=torch.preserve_format),
        }
        if self.settings["name"] == "nadam":
            device = self.device_of("mu_product", parameter)
            state["mu_product"] = torch.ones((), dtype=torch.float32, device=device)
        return state

    def device_of(self, key: str, parameter: torch.Tensor) -> torch.device:
        return torch.device("cpu") if key in HOST_SCALARS and not self.fused else parameter.device

    def state_dict(self) -> dict:
        """The optimizer's name and each parameter's state, in the order of the parameters."""
        return {"name": self.settings["name"], "state": self.state}

    def load_state_dict(self, saved: dict) -> None:
        """Put back what ``state_dict`` returned, each tensor on the device this optimizer keeps it on."""
        if saved.get("name") != self.settings["name"] or len(saved.get("state", ())) != len(self.params):
            raise StudyError(
                f"the saved optimizer state is not that of this run's {self.settings['name']} optimizer over "
                f"{len(self.params)} parameters"
            )
        self.state = [
            {key: value.to(self.device_of(key, parameter)) for key, value in state.items()}
            for parameter, state in zip(self.params, saved["state"], strict=True)
        ]


def make_optimizer(parameters, settings: dict, device: torch.device, runtime: dict) -> Optimizer:
    implementation = optimizer_implementation(device, runtime, fusable=FUSABLE[settings["name"]])
    return Optimizer(parameters, settings, implementation)
