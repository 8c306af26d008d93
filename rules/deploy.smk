# Deployment of every run's selected model: ONNX with the normalisation folded in, checked against
# PyTorch on the test split, INT8 calibrated on the training split, then CPU latency and sizes. The
# export and the latency are separate jobs, so a change to a latency option times again and exports
# nothing.


rule export:
    input:
        model=f"{RUN_DIR}/model.pt",
        summary=f"{RUN_DIR}/train.json",
        prepared=PREPARED,
    output:
        **deployed_models(),
        report=f"{RUN_DIR}/export.json",
    log:
        f"{LOGS}/export/{RUN_NAME}.log",
    conda:
        "../envs/train.yaml"
    threads: JOB_THREADS
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        deploy={
            key: config["deploy"][key]
            for key in ("int8", "calibration_images", "tolerance")
        },
    script:
        "../scripts/export.py"


rule latency:
    input:
        **deployed_models(),
        model=f"{RUN_DIR}/model.pt",
        summary=f"{RUN_DIR}/train.json",
        prepared=PREPARED,
        export=f"{RUN_DIR}/export.json",
    output:
        f"{RUN_DIR}/deploy.json",
    log:
        f"{LOGS}/latency/{RUN_NAME}.log",
    conda:
        "../envs/train.yaml"
    # Every thread the batch runs time with, so that no other job shares the cores being measured.
    threads: LATENCY_THREADS
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        latency=config["deploy"]["latency"],
    script:
        "../scripts/latency.py"
