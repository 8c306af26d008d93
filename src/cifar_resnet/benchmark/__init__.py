"""Training speed on one device: images/s, seconds per 45k-image epoch and peak device memory per depth,
measured by ``cifar-resnet benchmark`` (see docs/benchmark.md).

Every pipeline trains the study's paper recipe (``settings``: config/config.yaml's ``paper`` variant and
runtime section) on synthetic CIFAR-shaped data (``data``). The rows compared with each other are
measured together in interleaved rounds (``rounds``): warm-up steps excluded, each row's steps per
repeat derived from its measured step time, one repeat of each row per round, on equal cores (torch
threads plus worker or job processes), with wall and CPU seconds per repeat (``timing``); each figure
is the median over the rounds with its range, and each ratio is taken within a round (``tables``):

* ``ours`` (``pipelines``): a trainer built by ``train.build_trainer``, as a training job builds it,
  timed through the trainer's own ``train.train_steps``. Its modes (``modes.Mode``) switch the
  trainer's runtime switches: torch.compile, bf16 autocast, channels_last and CUDA graphs. A mode with
  a switch that the trainer does not apply on the device (``runtime.Runtime``'s ``not_applied``: on the
  CPU the switches act only under the runtime section's ``switches_on_cpu``, CUDA graphs on CUDA alone)
  is not run but reported as "n/a on cpu".
* ``classical`` (``pipelines``): the torchvision DataLoader pipeline of most CIFAR reproductions.
* ``packed``, ``sequential`` (``packing``) and ``jobs`` (``jobs``): K independent models of one
  architecture trained as one vmapped computation, by K trainers one after the other in one process,
  or by K processes at once sharing the device (as Snakemake jobs under $CIFAR_RESNET_JOBS_PER_GPU).

``runner`` plans the groups of rows and measures them (resuming an interrupted run), and ``tables``
shows them.

Peak memory is what a row holds on the device once warmed up (the device-resident dataset included
for ``ours`` and the K-model pipelines) plus the most ``torch.cuda.max_memory_allocated`` rose during
one of its repeats; the jobs count their own. On the CPU it is not measured (NaN).
"""
