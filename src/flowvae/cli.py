"""Command line: ``python -m flowvae <command> --help``.

Every Snakemake rule calls one of these commands. A workflow job reads its settings file (the
fields of its run that decide the result, and their key: :mod:`flowvae.spec`) and the runtime
file (threads, device, checkpoint interval); by hand, the same commands take config files and
``--set key=value`` overrides instead, validated once. Each command's arguments are declared
beside its handler; its ``--help`` text is the handler's docstring.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from flowvae import config as config_mod
from flowvae import io
from flowvae import spec as spec_mod
from flowvae.errors import ConfigError, FlowvaeError

log = logging.getLogger("flowvae")

#: name -> (handler, function adding its arguments, one-line help), in --help order.
COMMANDS: dict[str, tuple[Callable, Callable, str]] = {}


def command(name: str, arguments: Callable[[argparse.ArgumentParser], None], help: str):
    """Register the decorated handler as the command ``name``."""

    def register(handler: Callable[[argparse.Namespace], None]):
        COMMANDS[name] = (handler, arguments, help)
        return handler

    return register


# ---------------------------------------------------------------- shared arguments


def _config_args(p: argparse.ArgumentParser, settings_file: bool = True) -> None:
    g = p.add_argument_group("settings (a workflow job's file, or config files and overrides)")
    if settings_file:
        g.add_argument(
            "--settings-file",
            metavar="JSON",
            help="the job's settings file, written by the workflow (flowvae.study); when given, "
            "--config and --set are not read",
        )
        g.add_argument(
            "--runtime",
            metavar="JSON",
            help="the workflow's runtime file (device, checkpoint interval per variant); "
            "never changes a result",
        )
    g.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="YAML",
        help="config file; may be repeated, later files win, --set wins over all "
        "(config/README.md, 'Precedence'; default: schema defaults)",
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="override one key, e.g. --set train.lr=3e-4 (value parsed as YAML)",
    )


def _config(args: argparse.Namespace, settings: str | None = None) -> dict:
    """The validated config of --config files, a JSON string and --set overrides, in the
    one precedence (flowvae.precedence)."""
    return config_mod.load(args.config, settings, args.overrides)


def _threads(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--threads", type=int, default=None, help=f"torch threads (default: {default})")


def _run_spec(args: argparse.Namespace, stage: str, variant: str, seed: int):
    """The spec of a train or evaluate job: from its settings file, else from the config."""
    if args.settings_file:
        runtime = Path(args.runtime) if args.runtime else None
        spec = spec_mod.read_settings(Path(args.settings_file), stage, runtime)
    else:
        spec = config_mod.resolve(_config(args), variant, seed)
    if args.threads:
        spec = spec.replace_train(threads=args.threads)
        if spec.evaluate is not None:
            spec = spec.replace_evaluate(threads=args.threads)
    return spec


# ---------------------------------------------------------------- data


def _download_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for the raw IDX files")
    p.add_argument(
        "--mirror",
        default=None,
        help="local mirror folder (default: $FLOWVAE_MNIST_MIRROR, else the network)",
    )


@command("download", _download_args, "fetch and verify the four MNIST files")
def cmd_download(args: argparse.Namespace) -> None:
    """Fetch the four MNIST IDX files (public mirrors, or a local mirror folder holding .gz or
    raw files), verify their SHA-256 and write the raw files into OUT. A bad file is deleted and
    named in the error."""
    from flowvae import fetch

    fetch.download(Path(args.out), mirror=args.mirror)


def _prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--raw", required=True, help="folder with the raw IDX files (from download)")
    p.add_argument("--out", required=True, help="output .pt file")
    _config_args(p)


@command("prepare", _prepare_args, "digit subset, splits and binarization -> one tensor file")
def cmd_prepare(args: argparse.Namespace) -> None:
    """Filter the digits, split train/validation with a fixed seed, binarize validation and
    test once (and train when static) and save all tensors in one file, with the key of the
    data settings."""
    from flowvae import data

    if args.settings_file:
        spec = spec_mod.read_data_settings(Path(args.settings_file))
    else:
        spec = config_mod.data_spec(_config(args))
    data.prepare(Path(args.raw), Path(args.out), spec)


# ---------------------------------------------------------------- train and evaluate


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="prepared data file (from prepare)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--variant", help="a name under 'variants' in the config (not with a file)")
    p.add_argument("--seed", type=int, help="the run's seed (not with a settings file)")
    _threads(p, "train.threads")
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint.pt when it exists"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _config_args(p)


@command("train", _train_args, "train one variant with one seed")
def cmd_train(args: argparse.Namespace) -> None:
    """Train one VAE variant with one seed; writes model.pt, history.csv, train.json and
    periodic checkpoint.pt into OUT. With --settings-file the run is the file's; otherwise
    --variant and --seed pick it from the config."""
    from flowvae import train

    if not args.settings_file and (args.variant is None or args.seed is None):
        raise ConfigError("train: give --variant and --seed (or the job's --settings-file)")
    spec = _run_spec(args, "train", args.variant, args.seed)
    settings_file = Path(args.settings_file) if args.settings_file else None
    train.train(
        spec,
        Path(args.data),
        Path(args.out),
        resume=args.resume,
        progress=not args.no_progress,
        settings_file=settings_file,
    )


def _model_spec(args: argparse.Namespace):
    """The spec an evaluation runs: the job's settings file (checked against the model's key
    when the model is opened), or the model's own training spec with the config's evaluation
    settings."""
    from flowvae import modelfile

    if args.settings_file:
        return _run_spec(args, "evaluate", "", 0)
    trained = modelfile.load_model(Path(args.model))
    cfg = _config(args)
    evaluate = config_mod.resolve(cfg, next(iter(cfg["variants"])), 0).evaluate
    spec = trained.spec.with_evaluate(evaluate)
    device = cfg["train"]["device"]
    spec = spec.replace_train(device=device)
    return spec.replace_evaluate(threads=args.threads) if args.threads else spec


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model.pt from train")
    p.add_argument("--data", required=True, help="prepared data file")
    p.add_argument("--out", required=True, help="evaluation folder")
    _threads(p, "evaluate.threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _config_args(p)


@command("evaluate", _evaluate_args, "test loss, IWAE, exact 2-D likelihood and posterior grids")
def cmd_evaluate(args: argparse.Namespace) -> None:
    """Evaluate a trained model on the test set: negative ELBO and its terms per image, the
    IWAE bound, log p(x) by quadrature when the latent space is 2-D, and log q / log p(x, z)
    on a grid for the figures. The model knows what it was trained with: by hand, only the
    evaluation settings come from --config/--set."""
    from flowvae import evaluate

    evaluate.evaluate(
        _model_spec(args),
        Path(args.model),
        Path(args.data),
        Path(args.out),
        progress=not args.no_progress,
    )


def _gap_grids_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model.pt from train")
    p.add_argument("--data", required=True, help="prepared data file")
    p.add_argument("--reference", required=True, help="per_image.csv.gz of the reference variant")
    p.add_argument("--top", type=int, default=4, help="number of images (default 4)")
    p.add_argument("--out", required=True, help="output .npz file")
    _threads(p, "evaluate.threads")
    _config_args(p)


@command(
    "gap-grids",
    _gap_grids_args,
    "posterior grids of the test images with the largest gap under a reference",
)
def cmd_gap_grids(args: argparse.Namespace) -> None:
    """Draw log q and log p(x, z) on the z grid for the TOP test images whose posterior gap is
    largest in the reference variant's per_image.csv.gz (config key `reference`), for the figure
    gap_contours."""
    from flowvae import evaluate

    evaluate.gap_grids(
        _model_spec(args),
        Path(args.model),
        Path(args.data),
        Path(args.reference),
        Path(args.out),
        top=args.top,
    )


# ---------------------------------------------------------------- tables and selection


def _aggregate_args(p: argparse.ArgumentParser) -> None:
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
        "made with another key",
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


@command("aggregate", _aggregate_args, "collect every evaluation into one CSV")
def cmd_aggregate(args: argparse.Namespace) -> None:
    """One row per variant x seed (plus sweep columns) in a CSV."""
    from flowvae import aggregate

    if args.expect:
        aggregate.check_evaluations([Path(p) for p in args.evals], [Path(p) for p in args.expect])
    values = None
    if args.sweep_values is not None:
        values = [yaml.safe_load(v) for v in args.sweep_values]
    aggregate.aggregate(
        [Path(p) for p in args.evals],
        Path(args.out),
        train_benchmarks=[Path(p) for p in args.train_benchmarks],
        eval_benchmarks=[Path(p) for p in args.eval_benchmarks],
        sweep=args.sweep,
        sweep_values=values,
    )


def _summarize_args(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--budgets",
        default=None,
        help="budgets.csv (from the budgets command): adds the claim per training budget",
    )
    p.add_argument("--spikes", default=None, help="spikes.csv (from the budgets command)")
    p.add_argument("--out", required=True, help="output .md file")
    p.add_argument("--settings", metavar="JSON", help="config sections as a JSON string")
    _config_args(p, settings_file=False)


@command("summarize", _summarize_args, "markdown summary with statistics across seeds")
def cmd_summarize(args: argparse.Namespace) -> None:
    """The summary: mean and sd per variant, paired differences to the reference variant with
    95% intervals, the checks of every model and the claim sentence."""
    from flowvae import report

    selection = Path(args.selection) if args.selection else None
    cfg = _config(args, args.settings) if selection else None
    compute = Path(args.equal_compute) if args.equal_compute else None
    budgets = Path(args.budgets) if args.budgets else None
    spikes = Path(args.spikes) if args.spikes else None
    report.summarize(
        Path(args.metrics), Path(args.out), args.reference, args.note, selection, cfg, compute,
        budgets, spikes,
    )  # fmt: skip


def _budgets_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--histories", nargs="+", required=True, help="every run's history.csv")
    p.add_argument("--metrics", default=None, help="metrics.csv: adds the evaluated checkpoint")
    p.add_argument(
        "--reference", default="standard", help="the variant the flows are compared with"
    )
    p.add_argument("--out", required=True, help="output CSV (results/budgets.csv)")
    p.add_argument("--spikes-out", default=None, help="output CSV of every run's loss spikes")


@command("budgets", _budgets_args, "the claim per training budget, from the per-epoch test curves")
def cmd_budgets(args: argparse.Namespace) -> None:
    """Each flow minus the reference on the per-epoch test curve, paired over seeds, at epochs
    10, 20, 50, 100, 200, 500 (those reached) and at the reference's CPU seconds of each: mean,
    95% interval, p and the difference the seeds detect with 80% power."""
    from flowvae import budgets

    metrics = Path(args.metrics) if args.metrics else None
    spikes = Path(args.spikes_out) if args.spikes_out else None
    budgets.write_budgets(
        [Path(p) for p in args.histories], Path(args.out), args.reference, metrics, spikes
    )


def _records_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "settings_files",
        nargs="+",
        metavar="JSON",
        help="the evaluate settings files of the runs (results/long/settings/evaluate/*/*.json)",
    )
    p.add_argument("--out", required=True, help="records.json of the results root")
    p.add_argument(
        "--check",
        action="store_true",
        help="compare with --out instead of writing it; exit 1 naming each variant whose "
        "records today's code would not make",
    )


@command("records", _records_args, "write or check a results root's records.json")
def cmd_records(args: argparse.Namespace) -> None:
    """The probe of each variant's training and evaluation code (flowvae.records): written into
    records.json, which makes a results root keep its finished runs as records (judged by their
    settings key, not by file times); with --check, compared with the recorded probes."""
    from flowvae import records

    specs = [spec_mod.read_settings(Path(p), "evaluate") for p in args.settings_files]
    if not args.check:
        records.write(Path(args.out), specs)
        return
    lines = records.check(Path(args.out), specs)
    for line in lines:
        print(line)
    if lines:
        raise SystemExit(1)
    print(f"{args.out}: every variant's code computes its probe")


def _select_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", required=True, help="tuning plan JSON (flowvae.study)")
    p.add_argument("--out", required=True, help="output CSV (results/selection.csv)")


@command("select", _select_args, "the tuning stage's selection table")
def cmd_select(args: argparse.Namespace) -> None:
    """Read every tuning run of the plan (results/settings/tuning_plan.json, written by the
    workflow), rank each variant's candidates by the plan's rule on the validation loss and
    write one row per candidate, the selected one marked."""
    from flowvae import selection

    chosen = selection.from_plan(Path(args.plan))
    io.write_csv(chosen, Path(args.out))
    for row in chosen[chosen["selected"]].itertuples():
        log.info(
            "%s: selected %s (validation -ELBO %.3f)", row.variant, row.candidate, row.mean_val_loss
        )


def _adopt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--selection", default="results/selection.csv", help="%(default)s")
    p.add_argument("--out", default="config/selected.yaml", help="%(default)s")
    p.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="YAML",
        help="the config the selection was made with (default: config/config.yaml)",
    )


@command("adopt", _adopt_args, "write the selected settings into config/selected.yaml")
def cmd_adopt(args: argparse.Namespace) -> None:
    """Write each variant's selected candidate of the selection table, and the epochs that give
    every variant the same training seconds, into OUT (config/selected.yaml), a generated file
    the workflow reads after config/config.yaml; `snakemake` then runs the final comparison at
    those settings. The hand-written config is never rewritten."""
    from flowvae import adopt, selection

    base = config_mod.load(args.config or ["config/config.yaml"])
    table = selection.read(Path(args.selection))
    changed = adopt.adopt(Path(args.out), table, base, args.selection)
    print(
        f"{args.out}: selected settings written"
        + (f"; changed: {', '.join(changed)}" if changed else "; nothing changed")
    )


# ---------------------------------------------------------------- figures


def _figure_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="figure data name, e.g. posteriors, test_loss, loss_curves")
    p.add_argument(
        "--input", nargs="+", action="append", required=True, metavar=("NAME", "FILE"),
        help="an input by name and its files, e.g. --input metrics eval/*/seed*/metrics.json",
    )  # fmt: skip
    p.add_argument("--option", action="append", default=[], help="KEY=VALUE, e.g. key=train.lr")
    p.add_argument("--out", required=True, help="the figure data file (.csv, .csv.gz, .npz)")


@command("figure-data", _figure_data_args, "collect the data of figures from the runs' files")
def cmd_figure_data(args: argparse.Namespace) -> None:
    """Collect the figure data NAME (flowvae.figures.DATA) from its named input files into one
    small file: what its figures draw, and nothing more."""
    from flowvae import figures

    inputs = {name: [Path(p) for p in paths] for name, *paths in args.input}
    options = dict(option.split("=", 1) for option in args.option)
    figures.write_data(args.name, inputs, Path(args.out), options)


def _figure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="figure name, e.g. posterior_panel, test_loss, loss_curves")
    p.add_argument("--data", required=True, help="its figure data file (results/figdata/...)")
    p.add_argument("--variant", help="the variant of a per-variant figure (posterior)")
    p.add_argument("--out", nargs="+", required=True, help="output files (.png, .pdf)")


@command("figure", _figure_args, "render one figure (PNG and/or PDF) from its figure data")
def cmd_figure(args: argparse.Namespace) -> None:
    """Render the figure NAME from its figure data file alone."""
    from flowvae import figures

    figures.render(args.name, Path(args.data), [Path(p) for p in args.out], args.variant)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flowvae",
        description="Train and evaluate VAEs with Gaussian, IAF, PCP-Map and COT-Flow "
        "posteriors on MNIST (2-D latent space). The Snakemake pipeline chains these commands: "
        "download -> prepare -> train -> evaluate -> aggregate/summarize -> figure.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (handler, arguments, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=" ".join(handler.__doc__.split()))
        arguments(p)
        p.set_defaults(func=handler)
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
