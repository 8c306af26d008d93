# The test set, used once per run, on the model the run selected on its validation split.


rule evaluate:
    input:
        model=f"{RUN_DIR}/model.pt",
        summary=f"{RUN_DIR}/train.json",
        prepared=PREPARED,
    output:
        f"{RUN_DIR}/eval.json",
    log:
        f"{LOGS}/evaluate/{RUN_NAME}.log",
    conda:
        "../envs/train.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=15,
    params:
        gpu_slots=".snakemake/gpu-slots",
    script:
        "../scripts/evaluate.py"
