"""The fields of a run's records that their readers rely on: history.csv's columns, and what train.json,
eval.json and deploy.json must hold. Standard library only, so that Snakemake's own process can check
the records earlier runs left before any job starts (``cifar_resnet.preflight``)."""

RUN_KEY = ("dataset", "variant", "depth", "seed")
TEST_RESULTS = ("test_accuracy", "test_error", "test_loss", "params", "macs")
TRAINING = ("train_seconds", "epochs", "iterations", "selected_epoch", "selected_val_accuracy", "device")
# What the summary reads from train.json and eval.json.
TRAIN_FIELDS = (*RUN_KEY, *TRAINING)
EVAL_FIELDS = (*TEST_RESULTS, "inference_images_per_s")
# The exported model's sizes, its agreement with PyTorch, the INT8 model's test error, batch-1 latencies
# on one thread (median and p90), one batch's latency on several threads, and how they were measured.
DEPLOY_FIELDS = (
    "onnx_bytes",
    "int8_bytes",
    "onnx_top1_agreement",
    "onnx_max_logit_difference",
    "int8_test_error",
    "int8_error_difference",
    "onnx_b1_ms",
    "onnx_b1_p90_ms",
    "int8_b1_ms",
    "int8_b1_p90_ms",
    "eager_b1_ms",
    "eager_b1_p90_ms",
    "onnx_batch_ms",
    "int8_batch_ms",
    "eager_batch_ms",
    "latency_batch_size",
    "latency_threads",
    "cpu",
)
# What the figures read from a run's history.csv and eval.json.
LEARNING_CURVE_COLUMNS = ("epoch", "train_accuracy", "val_accuracy")
CONFUSION_FIELDS = ("confusion_matrix", "class_names")
