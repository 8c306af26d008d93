# The CIFAR ResNet study: data -> one training job per (dataset, variant, depth, seed), which ends
# with the run's single evaluation on the test set -> one deployment job per run (ONNX, INT8, CPU
# latency) -> summary, accuracy table, plots, README block and `snakemake --report report.html`.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/deploy.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
