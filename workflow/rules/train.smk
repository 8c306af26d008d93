# One job per (dataset, variant, depth, seed): the run's training, selected on its validation split,
# then the single use of the test set on the selected model. A fine-tuning run's input is its
# pretraining run's model, so Snakemake trains that first and retrains both when the pretraining
# changes.

from cifar_resnet.layout import (
    DEPLOYMENT,
    HISTORY,
    RESUME_FILE,
    TENSORBOARD_DIR,
    TRAIN_LOG,
    TRAIN_RECORD,
)

# Threads of a training job. Its data lives on its device, so on a GPU one thread launches the
# kernels and the job needs few more. On the CPU, single-thread jobs side by side give more images/s
# than one job on every core (the benchmark's `jobs` rows, docs/benchmark.md), and the grid has jobs
# to spare.
JOB_THREADS = 1


rule train:
    input:
        prepared=PREPARED,
        pretrained=pretrained_model,
    output:
        model=f"{RUN_DIR}/{MODEL}",
        history=f"{RUN_DIR}/{HISTORY}",
        summary=f"{RUN_DIR}/{TRAIN_RECORD}",
        evaluation=f"{RUN_DIR}/{EVAL_RECORD}",
    log:
        TRAIN_LOG,
    priority: run_compute
    group:
        RUN_GROUP
    conda:
        "../envs/train.yaml"
    threads: JOB_THREADS
    resources:
        cpus_per_task=JOB_THREADS,
        gpu=1,
        mem_mb=growing(8000),
        runtime=growing(train_minutes),
    params:
        run_config=lambda wildcards: STUDY.run_config(run_of(wildcards)),
        resume=RESUME_FILE,
        # The run's live curves for TensorBoard: no output, so a failed job's rerun keeps them and
        # continues them (a fresh start empties the folder).
        tensorboard=TENSORBOARD_DIR,
        # Snakemake removes a job's outputs before it starts: the job removes the deployment of the
        # model it replaces, so a failure never leaves it beside a missing model.
        derived=[f"{RUN_DIR}/{name}" for name in DEPLOYMENT],
        gpu_slots=".snakemake/gpu-slots",
        # Inductor's compiled code, shared by every job: a graph is compiled once per workflow.
        compile_cache=".snakemake/torch-compile-cache",
    script:
        "../scripts/train.py"
