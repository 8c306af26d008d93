"""Domain code of the CIFAR ResNet study: models, data, training, evaluation and reporting.

``cifar_resnet.load_run(run_dir)`` loads a finished run's model, ready to classify (``cifar_resnet.hub``).
"""


def __getattr__(name: str):
    # Imported on first use: the workflow's main process imports this package and must not import torch.
    if name == "load_run":
        from cifar_resnet.hub import load_run

        return load_run
    raise AttributeError(f"module 'cifar_resnet' has no attribute {name!r}")
