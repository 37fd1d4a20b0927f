"""Command line: ``python -m flowvae <command> --help``.

Every Snakemake rule calls one of these commands; each command reads a config (YAML files,
a JSON string and key=value overrides, validated against the schema) and writes its outputs
atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from flowvae import config as config_mod
from flowvae import io
from flowvae.errors import FlowvaeError

log = logging.getLogger("flowvae")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (merged in this order, then validated)")
    g.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="YAML",
        help="config file; may be repeated, later files win (default: schema defaults)",
    )
    g.add_argument(
        "--settings-file",
        metavar="JSON",
        help="settings file written by the workflow (flowvae.study); train and evaluate copy "
        "it into their output folder as settings.json when they succeed",
    )
    g.add_argument("--settings", metavar="JSON", help="config as a JSON string")
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override one key, e.g. --set train.lr=3e-4 (value parsed as YAML)",
    )


def _cfg(args: argparse.Namespace) -> dict:
    """The config of a command; the settings file is read once, here, and that text is what
    the job records at its end (a newer Snakemake may rewrite the file while the job runs)."""
    if not args.settings_file:
        return config_mod.load(args.config, args.settings, args.overrides)
    args.settings_text = Path(args.settings_file).read_text()
    try:
        settings = json.loads(args.settings_text)
    except ValueError as exc:
        raise FlowvaeError(
            f"settings file {args.settings_file} is not valid JSON ({exc}); delete it and run "
            "the pipeline again (it rewrites it)"
        ) from None
    if args.settings:
        config_mod.merge(settings, json.loads(args.settings))
    return config_mod.load(args.config, json.dumps(settings), args.overrides)


def _record_settings(args: argparse.Namespace, folder: Path) -> None:
    """Write the settings the job read (``_cfg``) into its finished folder as settings.json,
    its record of what it was made with (flowvae.study compares it with the current ones)."""
    from flowvae.study import RECORD

    if args.settings_file:
        io.write_text(folder / RECORD, args.settings_text)


def _check_model(model: str, cfg: dict) -> None:
    """Stop when the model was trained with settings other than ``cfg``'s (StaleRunError)."""
    from flowvae import train

    path = Path(model)
    _, record = train.load_model(path)
    train.check_trained_with(record, cfg, path)


def cmd_download(args: argparse.Namespace) -> None:
    from flowvae import fetch

    fetch.download(Path(args.out), mirror=args.mirror)


def cmd_prepare(args: argparse.Namespace) -> None:
    from flowvae import data

    cfg = _cfg(args)
    data.prepare(Path(args.raw), Path(args.out), cfg["data"])
    _record_settings(args, Path(args.out).parent)


def cmd_train(args: argparse.Namespace) -> None:
    from flowvae import train

    cfg = _cfg(args)
    config_mod.variant_settings(cfg, args.variant)
    train.train(
        cfg,
        args.variant,
        args.seed,
        Path(args.data),
        Path(args.out),
        threads=args.threads,
        resume=args.resume,
        progress=not args.no_progress,
    )
    _record_settings(args, Path(args.out))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from flowvae import evaluate

    cfg = _cfg(args)
    _check_model(args.model, cfg)
    evaluate.evaluate(
        cfg,
        Path(args.model),
        Path(args.data),
        Path(args.out),
        threads=args.threads,
        progress=not args.no_progress,
    )
    _record_settings(args, Path(args.out))


def cmd_gap_grids(args: argparse.Namespace) -> None:
    from flowvae import evaluate

    cfg = _cfg(args)
    _check_model(args.model, cfg)
    evaluate.gap_grids(
        cfg,
        Path(args.model),
        Path(args.data),
        Path(args.reference),
        Path(args.out),
        top=args.top,
        threads=args.threads,
    )


def cmd_aggregate(args: argparse.Namespace) -> None:
    from flowvae import report

    if args.expect:
        report.check_evaluations([Path(p) for p in args.evals], [Path(p) for p in args.expect])
    values = None
    if args.sweep_values is not None:
        values = [yaml.safe_load(v) for v in args.sweep_values]
    report.aggregate(
        [Path(p) for p in args.evals],
        Path(args.out),
        train_benchmarks=[Path(p) for p in args.train_benchmarks],
        eval_benchmarks=[Path(p) for p in args.eval_benchmarks],
        sweep=args.sweep,
        sweep_values=values,
    )


def cmd_summarize(args: argparse.Namespace) -> None:
    from flowvae import report

    selection = Path(args.selection) if args.selection else None
    cfg = _cfg(args) if selection else None
    compute = Path(args.equal_compute) if args.equal_compute else None
    report.summarize(
        Path(args.metrics), Path(args.out), args.reference, args.note, selection, cfg, compute
    )


def cmd_select(args: argparse.Namespace) -> None:
    from flowvae import selection

    chosen = selection.from_plan(Path(args.plan))
    io.write_csv(chosen, Path(args.out))
    for row in chosen[chosen["selected"]].itertuples():
        log.info(
            "%s: selected %s (validation -ELBO %.3f)", row.variant, row.candidate, row.mean_val_loss
        )


def cmd_adopt(args: argparse.Namespace) -> None:
    from flowvae import selection

    changed = selection.adopt(Path(args.config_file), selection.read(Path(args.selection)))
    print(
        f"{args.config_file}: selected settings written"
        + (f"; changed: {', '.join(changed)}" if changed else "; nothing changed")
    )


def cmd_figure(args: argparse.Namespace) -> None:
    from flowvae import figures

    figures.render(args.name, Path(args.data), [Path(p) for p in args.out], args.variant)


def cmd_figure_data(args: argparse.Namespace) -> None:
    from flowvae import figures

    inputs = {name: [Path(p) for p in paths] for name, *paths in args.input}
    options = dict(option.split("=", 1) for option in args.option)
    figures.write_data(args.name, inputs, Path(args.out), options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flowvae",
        description="Train and evaluate VAEs with Gaussian, IAF and PCP-Map posteriors on MNIST "
        "(2-D latent space). The Snakemake pipeline chains these commands: "
        "download -> prepare -> train -> evaluate -> aggregate/summarize -> figure.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "download",
        help="fetch and verify the four MNIST files",
        description="Fetch the four MNIST IDX files (public mirrors, or a local "
        "mirror folder holding .gz or raw files), verify their SHA-256 and write "
        "the raw files into OUT. A bad file is deleted and named in the error.",
    )
    p.add_argument("--out", required=True, help="folder for the raw IDX files")
    p.add_argument(
        "--mirror",
        default=None,
        help="local mirror folder (default: $FLOWVAE_MNIST_MIRROR, else the network)",
    )
    p.set_defaults(func=cmd_download)

    p = sub.add_parser(
        "prepare",
        help="digit subset, splits and binarization -> one tensor file",
        description="Filter the digits, split train/validation with a fixed seed, "
        "binarize validation and test once (and train when static) and save all "
        "tensors in one file.",
    )
    p.add_argument("--raw", required=True, help="folder with the raw IDX files (from download)")
    p.add_argument("--out", required=True, help="output .pt file")
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "train",
        help="train one variant with one seed",
        description="Train one VAE variant; writes model.pt, history.csv, "
        "train.json and periodic checkpoint.pt into OUT.",
    )
    p.add_argument("--data", required=True, help="prepared data file (from prepare)")
    p.add_argument("--variant", required=True, help="a name under 'variants' in the config")
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: train.threads)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint.pt when it exists"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="test loss, IWAE, exact 2-D likelihood and posterior grids",
        description="Evaluate a trained model on the test set: negative ELBO and "
        "its terms per image, the IWAE bound, log p(x) by quadrature when the "
        "latent space is 2-D, and log q / log p(x, z) on a grid for the figures.",
    )
    p.add_argument("--model", required=True, help="model.pt from train")
    p.add_argument("--data", required=True, help="prepared data file")
    p.add_argument("--out", required=True, help="evaluation folder")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: evaluate.threads)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "gap-grids",
        help="posterior grids of the test images with the largest gap under a reference",
        description="Draw log q and log p(x, z) on the z grid for the TOP test images whose "
        "posterior gap is largest in the reference variant's per_image.csv (config key "
        "`reference`), "
        "for the figure gap_contours.",
    )
    p.add_argument("--model", required=True, help="model.pt from train")
    p.add_argument("--data", required=True, help="prepared data file")
    p.add_argument("--reference", required=True, help="per_image.csv of the reference variant")
    p.add_argument("--top", type=int, default=4, help="number of images (default 4)")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    _add_config_args(p)
    p.set_defaults(func=cmd_gap_grids)

    p = sub.add_parser(
        "aggregate",
        help="collect every evaluation into one CSV",
        description="One row per variant x seed (plus sweep columns) in a CSV.",
    )
    p.add_argument("--evals", nargs="+", required=True, help="metrics.json files")
    p.add_argument(
        "--train-benchmarks",
        nargs="*",
        default=[],
        help="Snakemake benchmark file of each run's training, in the order of --evals",
    )
    p.add_argument(
        "--eval-benchmarks",
        nargs="*",
        default=[],
        help="Snakemake benchmark file of each run's evaluation, in the order of --evals",
    )
    p.add_argument(
        "--expect",
        nargs="+",
        default=None,
        metavar="JSON",
        help="the settings file of each --evals file, same order: stop if an evaluation was "
        "made with other settings",
    )
    p.add_argument("--sweep", default=None, help="name of the sweep these runs belong to")
    p.add_argument(
        "--sweep-values",
        nargs="+",
        default=None,
        metavar="VALUE",
        help="the swept value of each --evals file, in the same order (YAML/JSON)",
    )
    p.add_argument("--out", required=True, help="output CSV")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("summarize", help="markdown summary with statistics across seeds")
    p.add_argument("--metrics", required=True, help="metrics.csv from aggregate")
    p.add_argument(
        "--reference",
        default="standard",
        help="variant the others are compared with (the workflow passes config key `reference`)",
    )
    p.add_argument(
        "--note", action="append", default=[], help="a sentence for the summary (repeatable)"
    )
    p.add_argument(
        "--selection",
        default=None,
        help="selection.csv of the tuning stage: adds the protocol, the selected settings and "
        "whether the config (give it with --config/--settings) carries them",
    )
    p.add_argument(
        "--equal-compute",
        default=None,
        help="metrics.csv of the equal-compute comparison: adds it and which comparison the "
        "claim survives",
    )
    p.add_argument("--out", required=True, help="output .md file")
    _add_config_args(p)
    p.set_defaults(func=cmd_summarize)

    p = sub.add_parser(
        "select",
        help="the tuning stage's selection table",
        description="Read every tuning run of the plan (results/settings/tuning_plan.json, "
        "written by the workflow), rank each variant's candidates by the plan's rule on the "
        "validation loss and write one row per candidate, the selected one marked.",
    )
    p.add_argument("--plan", required=True, help="tuning plan JSON (flowvae.study)")
    p.add_argument("--out", required=True, help="output CSV (results/selection.csv)")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser(
        "adopt",
        help="write the selected settings into the config file",
        description="Replace the block of selected settings (the `variants` section between "
        "its marker lines) in CONFIG_FILE with each variant's selected candidate from the "
        "selection table; `snakemake` then runs the final comparison at those settings.",
    )
    p.add_argument("--selection", default="results/selection.csv", help="%(default)s")
    p.add_argument("--config-file", default="config/config.yaml", help="%(default)s")
    p.set_defaults(func=cmd_adopt)

    p = sub.add_parser(
        "figure-data",
        help="collect the data of one or more figures from the runs' files",
        description="Collect the figure data NAME (flowvae.figures.DATA) from its input files.",
    )
    p.add_argument("name", help="figure data name, e.g. posteriors, test_loss, loss_curves")
    p.add_argument(
        "--input", nargs="+", action="append", required=True, metavar=("NAME", "FILE"),
        help="an input by name and its files, e.g. --input metrics eval/*/seed*/metrics.json",
    )  # fmt: skip
    p.add_argument("--option", action="append", default=[], help="KEY=VALUE, e.g. key=train.lr")
    p.add_argument("--out", required=True, help="the figure data file (.csv, .csv.gz, .npz)")
    p.set_defaults(func=cmd_figure_data)

    p = sub.add_parser(
        "figure",
        help="render one figure (PNG and/or PDF) from its figure data",
        description="Render the figure NAME from its figure data file alone.",
    )
    p.add_argument("name", help="figure name, e.g. posterior_panel, test_loss, loss_curves")
    p.add_argument("--data", required=True, help="its figure data file (results/figdata/...)")
    p.add_argument("--variant", help="the variant of a per-variant figure (posterior)")
    p.add_argument("--out", nargs="+", required=True, help="output files (.png, .pdf)")
    p.set_defaults(func=cmd_figure)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if os.environ.get("SLURM_JOB_ID"):  # ties a log to its job (sacct, scontrol, squeue)
        log.info(
            "%s: SLURM job %s on %s, python %s",
            args.command,
            os.environ["SLURM_JOB_ID"],
            os.environ.get("SLURMD_NODENAME", "?"),
            sys.executable,
        )
    try:
        args.func(args)
    except FlowvaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
