# The test set, used once per run, on the model the run selected on its validation split.


rule evaluate:
    input:
        model=RUN_DIR + "/model.pt",
        summary=RUN_DIR + "/train.json",
        prepared=prepared_path,
    output:
        RUN_DIR + "/eval.json",
    params:
        gpu_slots=".snakemake/gpu-slots",
    log:
        "results/{dataset}/logs/evaluate/{variant}/resnet{depth}/seed{seed}.log",
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=15,
    script:
        "../scripts/evaluate.py"
