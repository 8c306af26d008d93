"""Training speed on one device: images/s, seconds per 45k-image epoch and peak device memory per depth,
measured by ``cifar-resnet benchmark`` (see docs/benchmark.md).

Every pipeline trains the study's paper recipe (``settings``: config/config.yaml's ``paper`` variant and
runtime section) on synthetic CIFAR-shaped data (``data``), with warm-up steps excluded and the median
over several timed repeats reported (``timing``):

* ``ours`` (``pipelines``): a trainer built by ``train.build_trainer``, as a training job builds it,
  timed through the trainer's own ``train.train_steps``. Its modes (``modes.Mode``) switch the
  trainer's runtime switches: torch.compile, bf16 autocast, channels_last and CUDA graphs. A mode with
  a switch that the trainer does not apply on the device (``runtime.inactive_switches``: all four act
  on CUDA only) is not run but reported as "n/a on cpu".
* ``classical`` (``pipelines``): the torchvision DataLoader pipeline of most CIFAR reproductions.
* ``packed``, ``sequential`` (``packing``) and ``jobs`` (``jobs``): K independent models of one
  architecture trained as one vmapped computation, by K trainers one after the other in one process,
  or by K processes at once sharing the device (as Snakemake jobs under $CIFAR_RESNET_JOBS_PER_GPU).

``runner`` plans and measures the rows (resuming an interrupted run), and ``tables`` shows them.

Peak memory is ``torch.cuda.max_memory_allocated`` over one measurement, the device-resident dataset
included for ``ours`` and the K-model pipelines; on the CPU it is not measured (NaN).
"""
