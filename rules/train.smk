# One job per (dataset, variant, depth, seed). A fine-tuning run's input is its pretraining run's
# model, so Snakemake trains that first and retrains both when the pretraining changes.


rule train:
    input:
        prepared=prepared_path,
        pretrained=pretrained_model,
    output:
        model=RUN_DIR + "/model.pt",
        history=RUN_DIR + "/history.csv",
        summary=RUN_DIR + "/train.json",
    params:
        run_config=lambda wildcards: STUDY.run_config(run_of(wildcards)),
        resume=lambda wildcards: run_of(wildcards).resume_file,
        gpu_slots=".snakemake/gpu-slots",
    log:
        "results/{dataset}/logs/train/{variant}/resnet{depth}/seed{seed}.log",
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=train_minutes,
    script:
        "../scripts/train.py"
