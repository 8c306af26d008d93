# Official archives (downloaded, or a local copy named in data.archives), the generated demo archive,
# and one prepared file per dataset that every training job loads.


rule download:
    output:
        DATA_ROOT + "/{dataset}/{archive}",
    wildcard_constraints:
        dataset="cifar10|cifar100",
        archive=r"cifar-100?-binary\.tar\.gz",
    params:
        local_copy=lambda wildcards: config["data"]["archives"].get(wildcards.dataset),
    log:
        "results/{dataset}/logs/download/{archive}.log",
    localrule: True
    script:
        "../scripts/download.py"


rule demo_archive:
    output:
        archive_path("demo"),
    params:
        **config["data"]["demo"],
    log:
        "results/demo/logs/demo_archive.log",
    script:
        "../scripts/demo_archive.py"


rule prepare:
    input:
        lambda wildcards: archive_path(wildcards.dataset),
    output:
        DATA_ROOT + "/{dataset}/prepared.pt",
    params:
        validation_fraction=config["data"]["validation_fraction"],
        split_seed=config["data"]["split_seed"],
    log:
        "results/{dataset}/logs/prepare.log",
    resources:
        mem_mb=4000,
    script:
        "../scripts/prepare.py"
