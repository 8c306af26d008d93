# Official archives (downloaded, or a local copy named in data.archives), the generated demo archive,
# and one prepared file per dataset that every training job loads.

# A cluster submits the demo's archive and its preparation as one job.
DATA_GROUP = "data"


rule download:
    output:
        f"{DATA_ROOT}/{{dataset}}/{{archive}}",
    log:
        f"{LOGS}/download/{{archive}}.log",
    wildcard_constraints:
        dataset="|".join(map(re.escape, REAL_DATASETS)),
        archive="|".join(
            re.escape(get_source(name).archive_name) for name in REAL_DATASETS
        ),
    localrule: True
    conda:
        "../envs/train.yaml"
    params:
        local_copy=lambda wildcards: config["data"]["archives"].get(wildcards.dataset),
    script:
        "../scripts/download.py"


rule demo_archive:
    output:
        archive_path("demo"),
    log:
        f"{RESULTS}/demo/logs/demo_archive.log",
    group:
        DATA_GROUP
    conda:
        "../envs/train.yaml"
    params:
        **config["data"]["demo"],
    script:
        "../scripts/demo_archive.py"


rule prepare:
    input:
        lambda wildcards: archive_path(wildcards.dataset),
    output:
        PREPARED,
    log:
        f"{LOGS}/prepare.log",
    group:
        DATA_GROUP
    conda:
        "../envs/train.yaml"
    resources:
        mem_mb=growing(4000),
    params:
        validation_fraction=config["data"]["validation_fraction"],
        split_seed=config["data"]["split_seed"],
    script:
        "../scripts/prepare.py"
