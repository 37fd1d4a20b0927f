"""The mutation check of tests/mutations.py: every deliberately wrong formula fails a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mutations
import pytest

SCRIPT = Path(__file__).with_name("mutations.py")


def test_every_mutation_pattern_matches_the_source_exactly():
    """Fast guard: a refactor that moves a formula must re-point its mutation, not drop it."""
    for m in mutations.MUTATIONS:
        text = mutations.mutated_text(m)
        assert text != (mutations.PACKAGE / m.file).read_text(), m.name
        assert m.tests and all((SCRIPT.parent / t).is_file() for t in m.tests), m.name


def test_a_pattern_that_no_longer_matches_stops_the_script():
    m = mutations.Mutation("gone", "vae.py", "no such text", "x", ("test_math.py",))
    with pytest.raises(mutations.PatternError, match="occurs 0 times"):
        mutations.mutated_text(m)


@pytest.mark.mutations
def test_every_mutation_is_caught():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=3600
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
