"""Every evaluation of a study in one table: one row per variant x seed (plus sweep columns),
from the per-run ``metrics.json`` files and Snakemake's benchmark files, after checking that
each evaluation has the key its settings file asks for."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from flowvae import io
from flowvae.errors import FlowvaeError, StaleRunError

log = logging.getLogger(__name__)

METRIC_KEYS = (
    "variant", "seed", "family", "n_test", "test_neg_elbo", "test_rec", "test_kl",
    "test_iwae_nll", "exact_nll", "mean_gap", "eval_seconds", "eval_seconds_per_image",
    "train_seconds", "seconds_per_epoch", "epochs", "n_params", "final_train_loss",
    "final_val_loss",
)  # fmt: skip
SWEEP_KEYS = ("sweep", "sweep_value")


def _read_metrics(path: Path) -> dict:
    """One metrics.json as a dict; a missing file, bad JSON or missing key names the file."""
    try:
        record = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise FlowvaeError(f"metrics file {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise FlowvaeError(f"metrics file {path} is not valid JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise FlowvaeError(f"metrics file {path} does not hold a JSON object")
    missing = [k for k in METRIC_KEYS if k not in record]
    if missing:
        raise FlowvaeError(f"metrics file {path} lacks the key(s) {', '.join(missing)}")
    row = {}
    for key, value in record.items():  # {"quadrature": {"points": 300}} -> quadrature_points
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in items:
            # Lists (e.g. a swept list of widths) go into the CSV as JSON text.
            row[f"{key}_{sub}" if sub else key] = json.dumps(v) if isinstance(v, list | dict) else v
    return row


def _read_benchmark(path: Path) -> tuple[float, float]:
    """(wall seconds, max RSS in MB) of a Snakemake benchmark TSV (mean / max over its rows)."""
    try:
        table = pd.read_csv(path, sep="\t")
    except FileNotFoundError as exc:
        raise FlowvaeError(f"benchmark file {path} does not exist") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise FlowvaeError(f"benchmark file {path} is not a Snakemake benchmark: {exc}") from exc
    if "s" not in table or "max_rss" not in table or table.empty:
        raise FlowvaeError(f"benchmark file {path} lacks the columns s and max_rss or a row")
    seconds = pd.to_numeric(table["s"], errors="coerce").mean()
    rss = pd.to_numeric(table["max_rss"], errors="coerce").max()
    return float(seconds), float(rss)


def _add_benchmarks(rows: list[dict], train: Sequence[Path], evaluate: Sequence[Path]) -> None:
    """Add train_benchmark_s, train_max_rss_mb and eval_benchmark_s to each row in place; the
    benchmark files come in the order of the rows (the workflow lists all three from
    flowvae.study's runs)."""
    for name, files in (("train", train), ("evaluate", evaluate)):
        if files and len(files) != len(rows):
            raise FlowvaeError(f"{len(rows)} metrics files but {len(files)} {name} benchmarks")
    for i, row in enumerate(rows):
        if train:
            row["train_benchmark_s"], row["train_max_rss_mb"] = _read_benchmark(train[i])
        if evaluate:
            row["eval_benchmark_s"] = _read_benchmark(evaluate[i])[0]


def _sort_value(value) -> tuple:
    """Sort key for mixed values: numbers (numerically), then text, then missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, 0.0, "")
    if isinstance(value, bool | int | float | np.number):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def check_evaluations(evals: list[Path], expected: list[Path]) -> None:
    """Stop (StaleRunError) when an evaluation's key (in its metrics.json) is not the key of
    the settings file the workflow expects for it."""
    if len(evals) != len(expected):
        raise FlowvaeError(f"{len(evals)} evaluations but {len(expected)} settings files")
    for metrics, settings in zip(evals, expected, strict=True):
        made = json.loads(metrics.read_text()).get("key")
        wanted = json.loads(settings.read_text()).get("key")
        if made != wanted:
            raise StaleRunError(
                f"{metrics.parent} was evaluated with other settings than the current config "
                f"(key {made}, not {wanted}); run the pipeline again (it rebuilds it), or delete "
                "that folder"
            )


def aggregate(
    eval_paths: list[Path],
    out: Path,
    train_benchmarks: Sequence[Path] = (),
    eval_benchmarks: Sequence[Path] = (),
    sweep: str | None = None,
    sweep_values: Sequence | None = None,
) -> pd.DataFrame:
    """One row per metrics.json (+ benchmark columns), sorted by sweep, variant, seed; to CSV.

    With ``sweep``, row i gets columns sweep = ``sweep`` and sweep_value = ``sweep_values[i]``.
    """
    if not eval_paths:
        raise FlowvaeError("aggregate needs at least one metrics.json file")
    rows = [_read_metrics(Path(p)) for p in eval_paths]
    if sweep is not None:
        if sweep_values is None or len(sweep_values) != len(rows):
            raise FlowvaeError("aggregate --sweep needs one --sweep-values entry per metrics file")
        for row, value in zip(rows, sweep_values, strict=True):
            row["sweep"], row["sweep_value"] = sweep, value
    _add_benchmarks(rows, [Path(p) for p in train_benchmarks], [Path(p) for p in eval_benchmarks])
    order = sorted(
        range(len(rows)),
        key=lambda i: tuple(_sort_value(rows[i].get(k)) for k in (*SWEEP_KEYS, "variant", "seed")),
    )
    seen: dict[tuple, Path] = {}
    for i in order:
        key = tuple(str(rows[i].get(k)) for k in (*SWEEP_KEYS, "variant", "seed"))
        if key in seen:
            raise FlowvaeError(f"metrics files {seen[key]} and {eval_paths[i]} are the same run")
        seen[key] = eval_paths[i]
    df = pd.DataFrame([rows[i] for i in order])
    sweep_cols = [c for c in SWEEP_KEYS if c in df.columns]
    df = df[sweep_cols + [c for c in df.columns if c not in sweep_cols]]
    io.write_csv(df, out)
    log.info("wrote %d rows to %s", len(df), out)
    return df
