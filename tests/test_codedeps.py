"""Each stage's package files (flowvae.codedeps): the import closure of a small package, the
real package's stages, and the rules that a dry run reruns after a module is edited (on a copy
of the workflow whose outputs are empty files: a dry run reads only their times).

The dry runs take a few seconds each (the Snakefile's parse); all but two are marked slow."""

from __future__ import annotations

import os
import re
import textwrap
import time
from pathlib import Path

import pipeline
import pytest

from flowvae import codedeps

# ----------------------------------------------------------------------------- a small package

SMALL = {
    "__init__.py": "",
    "a.py": "import os\nfrom pkg import b\nfrom .c import thing\n",
    "b.py": "def later():\n    import pkg.d\n",  # an import inside a function
    "c.py": "from . import e\nthing = 1\nSCHEMA = 'schema.yaml'\n",  # names a data file
    "d.py": "",
    "e.py": "class K:\n    def m(self):\n        try:\n            pass\n        except OSError:\n"
    "            from pkg import f\n",  # deep in a block
    "f.py": "",
    "g.py": "from pkg.found import one\n",
    "unused.py": "import pkg.a\n",
    "schema.yaml": "a: 1\n",
    "notes.txt": "read by nobody\n",
    "found/__init__.py": "import pkgutil\n",  # discovers its modules, as posteriors does
    "found/one.py": "from ..f import name\n",  # two levels up: pkg.f
    "found/two.py": "",
    "deep/__init__.py": "",
    "deep/inner/__init__.py": "",
    "deep/inner/h.py": "",
}


@pytest.fixture
def pkg(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    for name, text in SMALL.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def names(paths: set[Path], root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in paths}


def test_closure_follows_every_form_of_import(pkg):
    assert names(codedeps.closure(["pkg.a"], pkg), pkg) == {
        "__init__.py", "a.py", "b.py", "c.py", "d.py", "e.py", "f.py", "schema.yaml"
    }  # fmt: skip


def test_a_package_that_discovers_its_modules_counts_all_of_them(pkg):
    assert names(codedeps.closure(["pkg.g"], pkg), pkg) == {
        "__init__.py", "g.py", "found/__init__.py", "found/one.py", "found/two.py", "f.py"
    }  # fmt: skip


def test_parent_packages_count(pkg):
    assert names(codedeps.closure(["pkg.deep.inner.h"], pkg), pkg) == {
        "__init__.py", "deep/__init__.py", "deep/inner/__init__.py", "deep/inner/h.py"
    }  # fmt: skip


def test_an_edited_module_is_read_again(pkg):
    assert "f.py" not in names(codedeps.closure(["pkg.d"], pkg), pkg)
    (pkg / "d.py").write_text("from pkg import f\n")
    os.utime(pkg / "d.py", ns=(1, 1))  # another modification time than the first read's
    assert "f.py" in names(codedeps.closure(["pkg.d"], pkg), pkg)


def test_an_entry_that_is_no_module_is_refused(pkg):
    with pytest.raises(ValueError, match="no module pkg.gone"):
        codedeps.closure(["pkg.a", "pkg.gone"], pkg)


# ----------------------------------------------------------------------------- the package


def stage_files(stage: str, family: str | None = None) -> set[str]:
    return {
        Path(p).resolve().relative_to(codedeps.PACKAGE_DIR).as_posix()
        for p in codedeps.files(stage, family)
    }


FAMILIES = {f"posteriors/{p.name}" for p in (codedeps.PACKAGE_DIR / "posteriors").glob("*.py")}
TORCH_MODULES = {"train.py", "vae.py", "nets.py", "objectives.py", "evaluate.py", "quadrature.py"}


def test_prepare_depends_on_the_download_module_it_imports():
    assert {"data.py", "fetch.py", "io.py"} <= stage_files("prepare")
    assert not stage_files("prepare") & (TORCH_MODULES | FAMILIES)


def test_training_and_evaluation_depend_on_every_family_and_the_spec():
    """A job's settings arrive resolved (its spec file): neither needs the config module."""
    train, evaluate = stage_files("train"), stage_files("evaluate")
    assert {"train.py", "vae.py", "spec.py", "modelfile.py"} | FAMILIES <= train
    assert not (train | evaluate) & {"config.py", "config.schema.yaml"}
    assert "posteriors/iaf.py" in FAMILIES and "posteriors/base.py" in FAMILIES
    assert not train & {"evaluate.py", "quadrature.py", "figures/style.py", "report.py"}
    assert (train - {"train.py", "lock.py"}) | {"evaluate.py", "quadrature.py"} <= evaluate
    assert "train.py" not in evaluate, "the model file and the device live in modelfile.py"


def test_a_run_depends_on_its_own_family_module_only():
    for family in ("gaussian", "iaf", "pcpmap", "cotflow"):
        for stage in ("train", "evaluate"):
            own = {p for p in stage_files(stage, family) if p in FAMILIES}
            assert own == {
                "posteriors/__init__.py",
                "posteriors/base.py",
                f"posteriors/{family}.py",
            }
            assert stage_files(stage, family) | FAMILIES == stage_files(stage) | FAMILIES


def test_figures_depend_on_no_model_code():
    assert {"figures/registry.py", "figures/style.py", "io.py"} <= stage_files("figures")
    assert not stage_files("figures") & (TORCH_MODULES | FAMILIES | {"config.py"})


def test_no_stage_depends_on_the_command_line():
    for stage in codedeps.ENTRY:
        assert not stage_files(stage) & {"cli.py", "__main__.py", "codedeps.py"}, stage


def test_every_entry_module_is_one_the_command_line_runs():
    cli = codedeps.PACKAGE_DIR / "cli.py"
    imported = set(codedeps.imported(codedeps.scan(cli), "flowvae.cli", False))
    for stage, entries in codedeps.ENTRY.items():
        assert set(entries) <= imported, stage


def test_every_package_data_file_is_named_by_a_module():
    data = codedeps.data_names(codedeps.PACKAGE_DIR)
    assert sorted(p.name for p in data) == ["config.schema.yaml", "poster_test_neg_elbo.csv"]
    named = set().union(*(stage_files(stage) for stage in codedeps.ENTRY))
    assert {p.relative_to(codedeps.PACKAGE_DIR).as_posix() for p in data} <= named


def test_files_are_relative_to_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = codedeps.files("figures")
    assert found and all(not os.path.isabs(p) and (tmp_path / p).is_file() for p in found)


def test_the_closure_imports_nothing():
    script = textwrap.dedent(
        """
        import sys
        from flowvae import codedeps
        for stage in codedeps.ENTRY:
            codedeps.files(stage)
        heavy = {"torch", "matplotlib", "flowvae.train", "flowvae.figures"} & set(sys.modules)
        print(sorted(heavy))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(codedeps.PACKAGE_DIR.parent)}
    proc = pipeline.run_group([pipeline.BIN / "python", "-c", script], 120, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", pipeline.output(proc)


# ----------------------------------------------------------------------------- the workflow


def fake_outputs(plan: str) -> None:
    """Every output and benchmark file a dry run (``plan``, its output) lists, empty and all
    of one modification time (newer than the settings files the dry run wrote)."""
    stamp = time.time()
    for line in re.findall(r"^\s+(?:output|benchmark): (.*)$", plan, re.M):
        for name in line.split(", "):
            path = Path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            os.utime(path, (stamp, stamp))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, dict[str, int]]:
    """A copy of the workflow and package, the quick config's outputs in place (empty files,
    up to date), and the jobs a run of the whole study has."""
    tmp = tmp_path_factory.mktemp("codedeps")
    copy = pipeline.workflow_copy(tmp)
    proc = pipeline.snakemake("-n", tmp=tmp, cwd=copy)
    assert proc.returncode == 0, pipeline.output(proc)
    fake_outputs(proc.stdout)
    return copy, tmp, pipeline.job_counts(proc.stdout)


def reruns(finished, edited: str) -> dict[str, int]:
    """The jobs a dry run plans after a comment is appended to the package file ``edited``
    (restored afterwards, modification time included)."""
    copy, tmp, _ = finished
    path = copy / "src" / "flowvae" / edited
    text, stat = path.read_text(), path.stat()
    try:
        path.write_text(text + "# an edit\n")
        later = time.time() + 60
        os.utime(path, (later, later))
        proc = pipeline.snakemake("-n", "--quiet", "host", "rules", tmp=tmp, cwd=copy)
    finally:
        path.write_text(text)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    out = pipeline.output(proc)
    assert proc.returncode == 0, out
    return {} if "Nothing to be done" in out else pipeline.job_counts(out)


UPSTREAM = {"download", "prepare", "train", "evaluate", "gap_grids"}


def test_editing_the_command_line_reruns_nothing(finished):
    assert reruns(finished, "cli.py") == {}


def test_editing_the_download_module_reruns_all_but_the_download(finished):
    _, _, plan = finished
    jobs = reruns(finished, "fetch.py")
    assert jobs.pop("total") == plan["total"] - plan["download"]
    assert jobs == {k: n for k, n in plan.items() if k not in ("download", "total")}


@pytest.mark.slow
def test_editing_a_family_retrains_its_runs_only(finished):
    jobs = reruns(finished, "posteriors/iaf.py")  # imported by nobody: found by pkgutil
    assert 4 * jobs["train"] == finished[2]["train"]  # 1 of the 4 variants, every seed
    assert 4 * jobs["evaluate"] == finished[2]["evaluate"] and "prepare" not in jobs
    assert reruns(finished, "posteriors/base.py")["train"] == finished[2]["train"]


@pytest.mark.slow
def test_editing_the_quadrature_reevaluates_without_training(finished):
    jobs = reruns(finished, "quadrature.py")
    assert jobs["evaluate"] == finished[2]["evaluate"] and jobs["gap_grids"] >= 1
    assert not {"prepare", "train"} & set(jobs)


@pytest.mark.slow
def test_editing_the_figures_redraws_only_figures(finished):
    jobs = reruns(finished, "figures/style.py")
    figures = {k for k in finished[2] if k.startswith("figure_")}
    data = {k for k in finished[2] if k.startswith("figdata_")}  # the figures package collects
    assert figures and figures <= set(jobs) <= figures | data | {"all", "total"}
