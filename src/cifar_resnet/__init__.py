"""Domain code of the CIFAR ResNet study: models, data, training, evaluation and reporting."""
