# MNIST: download the four raw files, then filter digits, split and binarize once.


# The four raw files, checksum-verified by the package. On a cluster this runs on the
# login node, where the network (or the mirror folder) is reachable.
rule download:
    output:
        raw=expand(results("data/raw/{name}"), name=flowvae_study.MNIST_FILES),
    log:
        results("logs/download.log"),
    localrule: True
    conda:
        ENV
    params:
        out=parent,
        mirror=mirror_option,
    shell:
        "python -m flowvae download --out {params.out:q} {params.mirror} > {log:q} 2>&1"


# Digit subset, train/validation split and binarization, in one tensor file. The raw files
# are `ancient`: their content is fixed by checksum, so a fresh download (e.g. after a
# change of mirror) does not redo everything downstream.
rule prepare:
    input:
        raw=ancient(rules.download.output.raw),
        settings=unless_done(
            STUDY.study_file("data_settings"), STUDY.study_file("data")
        ),
        code=unless_done(CODE["prepare"], STUDY.study_file("data")),
    output:
        data=STUDY.study_file("data"),
    log:
        results("logs/prepare.log"),
    conda:
        ENV
    params:
        raw=raw_folder,
    shell:
        "python -m flowvae prepare --raw {params.raw:q} --out {output.data:q}"
        " --settings-file {input.settings:q} > {log:q} 2>&1"
