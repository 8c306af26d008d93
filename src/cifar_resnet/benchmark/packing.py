"""K independent models of one architecture on one device, each with its own initialisation, data order
and augmentation: packed into one vmapped computation (``PackedModels``), or trained one after the
other by K trainers in one process. images/s is the aggregate over the K models."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from cifar_resnet import train
from cifar_resnet.augment import augment, normalize
from cifar_resnet.benchmark.data import on_device
from cifar_resnet.benchmark.modes import Mode, packing_mode
from cifar_resnet.benchmark.pipelines import epoch_pieces, our_trainer, trainer_steps
from cifar_resnet.benchmark.settings import Settings
from cifar_resnet.benchmark.timing import Pipeline, Protocol
from cifar_resnet.models import CifarResNet
from cifar_resnet.runtime import Runtime


class PackedModels:
    """K models of one architecture trained as one computation: their parameters and buffers are
    stacked along a new leading dimension (``stack_module_state``) and ``vmap`` maps
    ``functional_call`` over the K sets, so every convolution runs as one grouped convolution and every
    BatchNorm as one wider BatchNorm. The K losses are independent, so the gradient of their sum is
    each model's own gradient, and SGD over the stacked tensors (momentum and weight decay act
    elementwise) is K separate SGDs. This vmapped step is the one thing here that the trainer does not
    offer: it trains one model per process.

    BatchNorm in training mode updates its running statistics in place. vmap refuses that when the
    running statistics are shared by all K models ("Batch norm got a batched tensor as input while the
    running_mean or running_var, which will be updated in place, were not batched"). Here they are
    stacked buffers mapped like the parameters (in_dims 0), so each model updates its own in place
    and keeps the eval-mode behaviour of an ordinary model. ``torch.func.replace_all_batch_norm_modules_``
    would also remove the error, but by dropping the running statistics altogether: evaluation would
    then normalise with each test batch's own statistics, which is not the model the trainer produces.

    channels_last does not apply (the input is 5-D) and CUDA graphs are not offered.
    """

    def __init__(self, models: Sequence[CifarResNet], runtime: Runtime, optimizer_settings: dict):
        self.runtime = runtime
        self.template = copy.deepcopy(models[0]).to("meta").train()
        self.params, self.buffers = stack_module_state(list(models))
        self.optimizer = train.make_optimizer(list(self.params.values()), optimizer_settings, runtime)
        # Each model its own dropout masks.
        self.losses = runtime.forward_of(vmap(self._loss, randomness="different"))

    def _loss(self, params, buffers, images, labels):
        logits = functional_call(self.template, (params, buffers), (images,))
        return F.cross_entropy(logits.float(), labels), logits

    def step(self, images, labels, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of every model on its own uint8 batch [K,B,3,H,W]; returns losses [K], logits [K,B,C]."""
        with self.runtime.autocast():
            losses, logits = self.losses(self.params, self.buffers, normalize(images, mean, std), labels)
        self.optimizer.zero_grad()
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach(), logits

    def state_dict_of(self, index: int) -> dict[str, torch.Tensor]:
        """Model ``index``'s state, as its own ``state_dict()`` would give it."""
        return {name: tensor[index].detach() for name, tensor in {**self.params, **self.buffers}.items()}


def epoch_chunk(
    images, labels, models: int, steps: int, batch_size: int, augmentation: dict, generator: torch.Generator
):
    """What the trainer draws at the start of an epoch, for ``steps`` steps and each of ``models``
    models: its own random order and one batched augmentation (the recipe's ``augmentation``). Returns
    uint8 [models, steps*batch, 3, 32, 32] and labels [models, steps*batch]."""
    count = steps * batch_size
    if count > len(labels):
        raise ValueError(f"{steps} steps of {batch_size} need {count} images; the data set has {len(labels)}")
    orders = [
        torch.randperm(len(labels), generator=generator, device=labels.device)[:count] for _ in range(models)
    ]
    orders = torch.stack(orders)
    chunk = augment(images[orders.flatten()], augmentation["crop_padding"], augmentation["flip"], generator)
    return chunk.view(models, count, *images.shape[1:]), labels[orders]


def packed_steps(trainers: Sequence[train.Trainer], seed: int) -> Callable[[int], None]:
    """``run(steps)`` for the trainers' models packed into one vmapped step, on the first trainer's
    data, with the recipe's optimizer at its base learning rate; each epoch of ``steps`` (``epoch_pieces``)
    draws its own orders and augmentation. What it shares with the trainer comes from train.py's
    interface for such callers: the optimizer (``train.make_optimizer``), each epoch's seed
    (``train.epoch_seed``) and the closing finiteness check (``train.check_finite``)."""
    first = trainers[0]
    device, batch_size, models = first.runtime.device, first.batch_size, len(trainers)
    optimizer_settings = first.recipe["optimizer"]
    packed = PackedModels([trainer.model for trainer in trainers], first.runtime, optimizer_settings)
    images, labels, mean, std = first.train.images, first.train.labels, first.mean, first.std
    augmentation = first.recipe["augmentation"]
    epochs = [0]

    def run(steps: int) -> None:
        for piece in epoch_pieces(steps, first.steps_per_epoch):
            epochs[0] += 1
            generator = torch.Generator(device=device).manual_seed(train.epoch_seed(seed, epochs[0]))
            chunk_images, chunk_labels = epoch_chunk(
                images, labels, models, piece, batch_size, augmentation, generator
            )
            step_losses = torch.empty(piece, models, device=device)
            for step in range(piece):
                batch = slice(step * batch_size, (step + 1) * batch_size)
                step_losses[step] = packed.step(chunk_images[:, batch], chunk_labels[:, batch], mean, std)[0]
            train.check_finite(step_losses.flatten(), epochs[0], 0)

    return run


def k_model_pipeline(
    depth: int,
    models: int,
    device: torch.device,
    protocol: Protocol,
    mode: Mode | None,
    packed: bool,
    data: dict,
    settings: Settings,
    threads: int,
) -> Pipeline:
    """``models`` independent models, each with its own batches: K trainers (seed + k) sharing one copy
    of the data on the device, trained by one vmapped step (``packed``) or each by its own
    ``train.train_steps``, one after the other; on ``threads`` torch threads."""
    mode = packing_mode(mode.name if mode else None, device)
    torch.set_num_threads(threads)
    resident = on_device(data, device)
    trainers = [
        our_trainer(depth, mode, device, replace(protocol, seed=protocol.seed + k), resident, settings)
        for k in range(models)
    ]
    run = packed_steps(trainers, protocol.seed) if packed else trainer_steps(trainers)
    del trainers  # packed keeps its stacked copy of the models only
    return Pipeline(run, models * protocol.batch_size, device, threads)
