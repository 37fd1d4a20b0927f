# MNIST: download the four raw files, then filter digits, split and binarize once.


# The four raw files, checksum-verified by the package. On a cluster this runs on the
# login node, where the network (or the mirror folder) is reachable.
rule download:
    output:
        raw=expand(results("data/raw/{name}"), name=MNIST_FILES),
    log:
        results("logs/download.log"),
    localrule: True
    conda:
        ENV
    params:
        mirror=mirror_option,
        out=parent,
    shell:
        "python -m flowvae download --out {params.out:q} {params.mirror} > {log:q} 2>&1"


# Digit subset, train/validation split and binarization, in one tensor file. The raw files
# are `ancient`: their content is fixed by checksum, so a fresh download (e.g. after a
# change of mirror) does not redo everything downstream.
rule prepare:
    input:
        raw=ancient(rules.download.output.raw),
        code=CODE["prepare"],
    output:
        data=results("data/mnist.pt"),
    log:
        results("logs/prepare.log"),
    conda:
        ENV
    params:
        raw=raw_folder,
        settings=settings("data"),
        overrides="",
    shell:
        "python -m flowvae prepare --raw {params.raw:q} --out {output.data:q}"
        " --settings {params.settings:q} {params.overrides} > {log:q} 2>&1"
