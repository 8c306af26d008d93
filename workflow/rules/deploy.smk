# Deployment of every run's selected model, one job per run: ONNX with the normalisation folded in,
# checked against PyTorch on the test split, INT8 calibrated on the training split, then CPU latency
# and sizes.

from cifar_resnet.layout import DEPLOY_LOG, TRAIN_RECORD

# A number the configuration gives, never the core count of the machine that submits the jobs. A
# cluster asks for it as cpus_per_task (the SLURM plugin's CPU request), because Snakemake caps a rule's
# threads at the submitting host's cores (--cores, which the workflow profile sets to all).
LATENCY_THREADS = config["deploy"]["latency"]["batch_threads"]


rule deploy:
    input:
        model=f"{RUN_DIR}/{MODEL}",
        summary=f"{RUN_DIR}/{TRAIN_RECORD}",
        prepared=PREPARED,
    output:
        **{kind: f"{RUN_DIR}/{name}" for kind, name in DEPLOYED.items()},
        report=f"{RUN_DIR}/{DEPLOY_RECORD}",
    log:
        DEPLOY_LOG,
    priority: run_compute
    group:
        RUN_GROUP
    conda:
        "../envs/train.yaml"
    # Every thread the batch runs time with, so that no other job shares the cores being measured.
    threads: LATENCY_THREADS
    resources:
        cpus_per_task=LATENCY_THREADS,
        mem_mb=growing(4000),
        runtime=growing(15),
    params:
        deploy={
            key: config["deploy"][key]
            for key in ("int8", "calibration_images", "tolerance", "latency")
        },
    script:
        "../scripts/deploy.py"
