"""benchmarks/epoch_throughput.py runs end to end on tiny settings and reports sane numbers."""

import json
import math
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STUDY_VARIANTS = list(yaml.safe_load((REPO / "config" / "config.yaml").read_text())["variants"])
SCRIPT = REPO / "benchmarks" / "epoch_throughput.py"
TINY = [
    "--images", "256", "--repeats", "1", "--threads", "1", "--batch-size", "64",
    "--set", "model.hidden=[32]",
    "--set", "variants.iaf.hidden=16", "--set", "variants.iaf.context_dim=8",
    "--set", "variants.pcpmap.width=16", "--set", "variants.pcpmap.context_width=16",
    "--set", "variants.pcpmap.context_dim=8",
    "--set", "variants.cotflow.width=8", "--set", "variants.cotflow.context_dim=8",
    "--set", "variants.cotflow.steps=2",
]  # fmt: skip


def numbers(node):
    """Every int or float in a JSON document."""
    if isinstance(node, dict):
        return [x for v in node.values() for x in numbers(v)]
    if isinstance(node, list):
        return [x for v in node for x in numbers(v)]
    return [node] if isinstance(node, int | float) and not isinstance(node, bool) else []


def test_epoch_throughput_tiny_run(tmp_path):
    out = tmp_path / "epoch.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True))
        rows[cells["variant"]] = cells
    assert set(rows) == set(STUDY_VARIANTS)
    for cells in rows.values():
        assert float(cells["images_per_s"]) > 0
        assert float(cells["over_floor"]) > 0
    assert rows["standard"]["ratio"] == "1.00"
    # against the standard epoch: iaf, pcpmap, cotflow; against the FLOP floor: all four
    assert proc.stdout.count("PASS") + proc.stdout.count("MISS") == 2 * len(STUDY_VARIANTS) - 1

    record = json.loads(out.read_text())
    assert [r["variant"] for r in record["variants"]] == STUDY_VARIANTS
    values = numbers(record)
    assert values and all(math.isfinite(v) for v in values)
    assert all(r["epoch_s"] > 0 and r["gflop_per_epoch"] > 0 for r in record["variants"])
    assert record["mm_gflops"]["layer_gemms"] > 0 and record["mm_gflops"]["peak_2048"] > 0


def test_epoch_throughput_help():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "--repeats" in proc.stdout
