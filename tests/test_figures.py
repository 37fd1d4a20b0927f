"""Every figure data file is collected from small synthetic run files (Gaussian posteriors on a
grid), and every figure is drawn from its figure data alone."""

from __future__ import annotations

import json
import string
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from flowvae import figures, selection
from flowvae import study as study_mod
from flowvae.errors import FlowvaeError
from flowvae.figures import registry, store

VARIANTS = ("standard", "iaf", "pcpmap")
SEEDS = (0, 1)
GRID_IMAGES = np.array([3, 7, 11])  # positions in the test set drawn on the grid
N_TEST = 40


def _digit(label: int, rng: np.random.Generator) -> np.ndarray:
    """A crude binarized 28 x 28 digit: a stroke per label plus a little noise."""
    img = np.zeros((28, 28))
    if label == 1:
        img[4:24, 13:16] = 1
    else:
        img[5:8, 8:20] = 1
        img[5:23, 17:20] = 1
        img[20:23, 8:20] = label >= 3
        img[12:15, 8:20] = label == 3
    img = np.logical_xor(img > 0, rng.random((28, 28)) < 0.02)
    return img.reshape(-1).astype(np.float32)


def _log_gauss(z1: np.ndarray, z2: np.ndarray, mean, sd, rho: float) -> np.ndarray:
    """log N(z; mean, [[sd1², rho sd1 sd2], ...]) on the grid, indexed [j, k] = (z2[j], z1[k])."""
    a = (z1[None, :] - mean[0]) / sd[0]
    b = (z2[:, None] - mean[1]) / sd[1]
    quad = (a**2 - 2 * rho * a * b + b**2) / (1 - rho**2)
    return -0.5 * quad - np.log(2 * np.pi * sd[0] * sd[1] * np.sqrt(1 - rho**2))


def write_grid(path: Path, variant: str, seed: int, labels: np.ndarray) -> Path:
    """A grid.npz with a correlated true posterior and a q that fits it better for the flows."""
    rng = np.random.default_rng(seed)
    z1 = z2 = np.linspace(-4, 4, 60)
    log_joint, log_q = [], []
    for i in range(len(GRID_IMAGES)):
        mean, sd, rho = (-1.0 + i, 0.5 * i - 0.5), (0.6 + 0.2 * i, 0.4), 0.7 - 0.3 * i
        log_joint.append(-115.0 + _log_gauss(z1, z2, mean, sd, rho))
        q_rho = 0.0 if variant == "standard" else 0.9 * rho
        log_q.append(_log_gauss(z1, z2, mean, (0.8 * sd[0], 0.8 * sd[1]), q_rho))
    images = np.stack([_digit(int(lab), rng) for lab in labels])
    recon_inputs = np.stack([_digit(1 + k % 4, rng) for k in range(16)])
    np.savez(
        path, variant=np.array(variant), seed=np.array(seed), family=np.array("gaussian"),
        z1=z1, z2=z2, log_q=np.stack(log_q), log_joint=np.stack(log_joint), images=images,
        image_index=GRID_IMAGES, labels=labels, recon_inputs=recon_inputs,
        recon=np.clip(0.8 * recon_inputs + 0.1 * rng.random((16, 784)), 0, 1),
        samples=np.stack([_digit(1 + k % 4, rng) * 0.9 for k in range(64)]),
    )  # fmt: skip
    return path


def build_study(root: Path) -> dict[str, list[Path]]:
    """Write grid.npz, history.csv, per_image.csv, quadrature_check.csv and metrics.json for
    every run, a selection table and a sweep's metrics table."""
    rng = np.random.default_rng(0)
    labels = rng.integers(1, 5, N_TEST)
    files: dict[str, list[Path]] = {"grid": [], "history": [], "per_image": []}
    metrics, sweep_rows = [], []
    for k, variant in enumerate(VARIANTS):
        for seed in SEEDS:
            run = root / variant / f"seed{seed}"
            run.mkdir(parents=True)
            files["grid"].append(write_grid(run / "grid.npz", variant, seed, labels[GRID_IMAGES]))
            epochs = np.arange(1, 21)
            loss = 125 - k + 60 * np.exp(-epochs / 2.5) + rng.normal(0, 0.3, 20)
            history = pd.DataFrame({
                "variant": variant, "seed": seed, "epoch": epochs, "train_loss": loss + 1,
                "val_loss": loss + 1.5, "val_rec": loss - 4, "val_kl": 5.5, "lr": 1e-3,
                "test_loss": loss + 0.5, "seconds": 4.0 + k, "cpu_seconds": 3.5 + k,
            })  # fmt: skip
            history.to_csv(run / "history.csv", index=False)
            files["history"].append(run / "history.csv")
            gap = rng.lognormal(0.5 - 0.4 * k, 1.2, N_TEST)
            gap[5] = 150.0  # an image with a huge gap, as in the real data
            neg_elbo = 122 - k + rng.normal(0, 10, N_TEST)
            per_image = pd.DataFrame({
                "variant": variant, "seed": seed, "index": np.arange(N_TEST), "label": labels,
                "neg_elbo": neg_elbo, "rec": neg_elbo - 6, "kl": 6.0, "iwae_nll": neg_elbo - 1,
                "exact_nll": neg_elbo - gap, "gap": gap,
            })  # fmt: skip
            per_image.to_csv(run / "per_image.csv", index=False)
            files["per_image"].append(run / "per_image.csv")
            ks = np.array([1, 10, 100, 1000])
            check = pd.DataFrame({
                "variant": variant, "seed": seed, "image": np.repeat(np.arange(4), len(ks)),
                "k": np.tile(ks, 4), "stderr": 0.05, "log_px": -120.0,
                "excess": -np.tile(3.0 / np.sqrt(ks), 4) * (k + 1),
            })  # fmt: skip
            check["iwae"] = check["log_px"] + check["excess"]
            check.to_csv(run / "quadrature_check.csv", index=False)
            files.setdefault("check", []).append(run / "quadrature_check.csv")
            metrics.append({
                "variant": variant, "seed": seed, "test_neg_elbo": 122 - k + 0.3 * seed,
                "seconds_per_epoch": 4.0 + k + 0.2 * seed, "exact_nll": 119 - k,
                "train_seconds": 20 * (4.0 + k + 0.2 * seed), "train_cpu_seconds": 20 * (3.5 + k),
            })  # fmt: skip
            (run / "metrics.json").write_text(json.dumps(metrics[-1]))
            files.setdefault("metrics", []).append(run / "metrics.json")
            for value in (1e-4, 3e-4, 1e-3):
                sweep_rows.append({
                    "sweep": "lr", "sweep_value": value, "variant": variant, "seed": seed,
                    "test_neg_elbo": 122 - k + 2 * abs(np.log10(value) + 3.3) + 0.3 * seed,
                })  # fmt: skip
    tuning_runs = [
        {
            "variant": variant, "candidate": f"{own}-lr={lr}-epochs={epochs}", "seed": seed,
            "labels": {"lr": lr, "epochs": epochs, f"size_{variant}": own},
            "overrides": {"train": {"lr": lr, "epochs": epochs}},
            "final_val_loss": 126 - k + 3 * abs(np.log10(lr) + 3) - epochs / 20 + own
            + rng.normal(0, 0.5),
            "train_seconds": epochs * (4.0 + k), "seconds_per_epoch": 4.0 + k,
        }
        for k, variant in enumerate(VARIANTS)
        for own in (1, 2)
        for lr in (3e-4, 1e-3, 3e-3)
        for epochs in (10, 30)
        for seed in (100, 101)
    ]  # fmt: skip
    table = selection.table(tuning_runs, "lowest_mean_val_loss")
    table.to_csv(root / "selection.csv", index=False)
    files["selection"] = [root / "selection.csv"]
    pd.DataFrame(metrics).to_csv(root / "metrics.csv", index=False)
    pd.DataFrame(sweep_rows).to_csv(root / "sweep_lr.csv", index=False)
    files["table"] = [root / "metrics.csv"]
    files["sweep"] = [root / "sweep_lr.csv"]
    return files


def seed0(paths: list[Path]) -> list[Path]:
    return [p for p in paths if p.parent.name == "seed0"]


def inputs_for(data: str, files: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """The named inputs of figure data ``data``, as the workflow plans them (figure seed 0)."""
    grids = {"grid": seed0(files["grid"])}
    return {
        "test_loss": {"metrics": files["metrics"]},
        "loss_curves": {"history": files["history"]},
        "test_curve": {"history": files["history"]},
        "cost_tradeoff": {"metrics": files["metrics"], "history": files["history"]},
        "sweep": {"metrics": files["sweep"]},
        "tuning": {"selection": files["selection"]},
        "gap_distribution": {"per_image": files["per_image"]},
        "quadrature_check": {"check": files["check"]},
        "posteriors": grids,
        "reconstructions": grids,
        "samples": grids,
        "gap_contours": {
            "gap_grid": seed0(files["grid"]),
            "per_image": seed0(files["per_image"]),
            "reference": seed0(files["per_image"])[:1],
        },
    }[data]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Synthetic outputs of 3 variants x 2 seeds (built once for the module)."""
    return build_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def figdata(study, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every figure data file, collected from the synthetic study: data name -> path."""
    root = tmp_path_factory.mktemp("figdata")
    out = {}
    for name, data in figures.DATA.items():
        out[name] = Path(registry.data_path(str(root), data))
        figures.write_data(name, inputs_for(name, study), out[name], {"key": "train.lr"})
    return out


def data_of(name: str, figdata: dict[str, Path]) -> Path:
    return figdata[figures.REGISTRY[name].data]


def test_declarations_name_study_files_and_fill_their_captions() -> None:
    kinds = set(study_mod.RUN_FILES) | set(study_mod.STUDY_FILES) | {"sweep_table"}
    values = {field: "X" for field in registry.CAPTION_FIELDS}
    for data in figures.DATA.values():
        assert {spec.kind for spec in data.inputs.values()} <= kinds, data.name
        assert data.ext in ("csv", "csv.gz", "npz"), data.name
    for fig in figures.REGISTRY.values():
        assert fig.data in figures.DATA and fig.category, fig.name
        fields = {f for _, f, _, _ in string.Formatter().parse(fig.caption) if f is not None}
        assert fields <= set(registry.CAPTION_FIELDS), fig.name
        text = fig.caption.format(**values)
        assert "{{" not in text and "{%" not in text and "@" not in text, fig.name


@pytest.mark.parametrize("name", sorted(figures.REGISTRY))
def test_figure_renders_png_and_pdf_from_its_data_alone(name: str, figdata, tmp_path) -> None:
    outputs = [tmp_path / f"{name}.png", tmp_path / "pdf" / f"{name}.pdf"]
    variant = "iaf" if figures.REGISTRY[name].per_variant else None
    figures.render(name, data_of(name, figdata), outputs, variant)
    assert plt.get_fignums() == []  # closed
    assert outputs[1].read_bytes()[:5] == b"%PDF-"
    assert outputs[1].stat().st_size > 1000
    image = mpimg.imread(outputs[0])
    height, width = image.shape[:2]
    assert 300 <= height <= 4000 and 300 <= width <= 4000, image.shape
    assert image[..., :3].std() > 0.02  # not blank
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["pdf", *(o.name for o in outputs)]
    )


def test_figure_data_hold_what_is_drawn_in_the_inputs_order(study, figdata) -> None:
    loss = pd.read_csv(figdata["test_loss"])
    assert list(loss.columns) == ["variant", "seed", "test_neg_elbo"]
    assert list(loss["variant"].unique()) == list(VARIANTS)
    assert loss["test_neg_elbo"].tolist() == [  # exactly: the figure is the same either way
        json.loads(p.read_text())["test_neg_elbo"] for p in study["metrics"]
    ]
    gaps = pd.read_csv(figdata["gap_distribution"])  # compressed: pandas reads .gz
    assert list(gaps.columns) == ["variant", "seed", "index", "gap"]
    assert len(gaps) == len(VARIANTS) * len(SEEDS) * N_TEST
    grids = np.load(figdata["posteriors"])
    assert grids["variant"].tolist() == list(VARIANTS) and grids["seed"].tolist() == [0, 0, 0]
    assert grids["log_q"].shape == (len(VARIANTS), len(GRID_IMAGES), 60, 60)
    assert grids["log_q"].dtype == np.float32 and grids["images"].dtype == np.uint8
    assert grids["log_q"].max(axis=(2, 3)) == pytest.approx(0.0)  # minus each panel's max
    assert grids["log_q"].min() >= -21.0
    with np.load(study["grid"][2]) as first:  # iaf seed 0: the stored panel is its own, shifted
        raw = first["log_q"][1]
    assert grids["log_q"][1, 1] == pytest.approx(np.maximum(raw - raw.max(), -21), abs=1e-4)
    # the inputs in another order: the figure data follow it (the workflow gives config order)
    shuffled = {"metrics": study["metrics"][::-1]}
    assert figures.DATA["test_loss"].collect(shuffled, {})["variant"].iloc[0] == "pcpmap"


@pytest.mark.parametrize("name", ["test_loss", "gap_distribution", "posteriors"])
def test_figure_data_are_the_same_bytes_at_another_time(name, study, tmp_path, monkeypatch) -> None:
    path = tmp_path / f"{name}.{figures.DATA[name].ext}"
    assert figures.write_data(name, inputs_for(name, study), path)
    first, mtime = path.read_bytes(), path.stat().st_mtime_ns
    later = time.time() + 86_400 * 400
    monkeypatch.setattr(time, "time", lambda: later)  # gzip and zip headers would take it
    monkeypatch.setattr(time, "localtime", lambda *a: time.gmtime(later))
    assert store.encode(figures.DATA[name].collect(inputs_for(name, study), {}), path) == first
    assert not figures.write_data(name, inputs_for(name, study), path), "unchanged: not written"
    assert path.stat().st_mtime_ns == mtime


def test_figures_are_the_same_bytes_when_redrawn(figdata, tmp_path) -> None:
    """Each figure job is a process of its own: two processes draw the same files."""
    names = ("test_loss", "posterior_panel")
    script = "import sys; from flowvae import figures\n" + "".join(
        f"figures.render({name!r}, {str(data_of(name, figdata))!r}, "
        f"[sys.argv[1] + '/{name}.png', sys.argv[1] + '/{name}.pdf'])\n"
        for name in names
    )
    for k in (0, 1):
        (tmp_path / str(k)).mkdir()
        subprocess.run([sys.executable, "-c", script, str(tmp_path / str(k))], check=True)
        time.sleep(1.1)  # a creation date would differ
    for name in names:
        for ext in ("png", "pdf"):
            first, second = (tmp_path / k / f"{name}.{ext}" for k in ("0", "1"))
            assert first.read_bytes() == second.read_bytes(), f"{name}.{ext}"


def test_unknown_figure_lists_the_names(figdata, tmp_path: Path) -> None:
    with pytest.raises(FlowvaeError, match="unknown figure 'nope'.*posterior_panel"):
        figures.render("nope", figdata["test_loss"], [tmp_path / "x.png"])


def test_missing_figure_data_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "figdata" / "test_loss.csv"
    with pytest.raises(FlowvaeError, match=f"{missing} of figure test_loss does not exist"):
        figures.render("test_loss", missing, [tmp_path / "x.png"])
    assert not (tmp_path / "x.png").exists()


def test_damaged_figure_data_are_named(figdata, tmp_path: Path) -> None:
    cut = tmp_path / "posteriors.npz"
    cut.write_bytes(figdata["posteriors"].read_bytes()[:500])
    garbage = tmp_path / "gap_distribution.csv.gz"
    garbage.write_bytes(b"\x1f\x8b not gzip at all")
    lacking = tmp_path / "test_loss.csv"
    pd.read_csv(figdata["test_loss"]).drop(columns="test_neg_elbo").to_csv(lacking, index=False)
    no_variant = tmp_path / "loss_curves.csv"
    pd.read_csv(figdata["loss_curves"]).drop(columns="variant").to_csv(no_variant, index=False)
    for name, path in [
        ("posterior_panel", cut), ("gap_distribution", garbage), ("test_loss", lacking),
        ("loss_curves", no_variant),
    ]:  # fmt: skip
        with pytest.raises(FlowvaeError, match=f"{path} of figure {name} is damaged"):
            figures.render(name, path, [tmp_path / "x.png"])
    assert plt.get_fignums() == [] and not (tmp_path / "x.png").exists()


def test_missing_input_of_figure_data_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "eval" / "metrics.json"
    with pytest.raises(FlowvaeError, match=f"input file {missing} of figure data test_loss"):
        figures.write_data("test_loss", {"metrics": [missing]}, tmp_path / "t.csv")


def test_gap_distribution_needs_exact_evaluation(study, tmp_path: Path) -> None:
    df = pd.read_csv(study["per_image"][0])
    df["gap"] = np.nan
    df.to_csv(tmp_path / "per_image.csv", index=False)
    with pytest.raises(FlowvaeError, match="exact evaluation"):
        figures.write_data(
            "gap_distribution", {"per_image": [tmp_path / "per_image.csv"]}, tmp_path / "g.csv.gz"
        )
    assert not (tmp_path / "g.csv.gz").exists()


def test_grid_without_a_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "grid.npz"
    np.savez(path, variant=np.array("standard"), seed=np.array(0))
    with pytest.raises(FlowvaeError, match="images") as info:
        figures.write_data("samples", {"grid": [path]}, tmp_path / "s.npz")
    assert str(path) in str(info.value)


def test_grid_without_contours_draws_pictures_only(study, tmp_path: Path) -> None:
    """A latent space other than 2-D gives no contour arrays: pictures work, contours explain."""
    with np.load(study["grid"][0]) as npz:
        arrays = {k: npz[k] for k in npz.files if k not in ("z1", "z2", "log_q", "log_joint")}
    np.savez(tmp_path / "grid.npz", **arrays)
    inputs = {"grid": [tmp_path / "grid.npz"]}
    figures.write_data("reconstructions", inputs, tmp_path / "r.npz")
    figures.render("reconstructions", tmp_path / "r.npz", [tmp_path / "r.png"])
    assert (tmp_path / "r.png").stat().st_size > 0
    with pytest.raises(FlowvaeError, match="latent_dim 2"):
        figures.write_data("posteriors", inputs, tmp_path / "p.npz")


def test_panel_refuses_grids_of_different_images(study, tmp_path: Path) -> None:
    other = tmp_path / "grid.npz"
    write_grid(other, "iaf", 0, np.array([1, 2, 3]))
    with np.load(other) as npz:
        arrays = dict(npz)
    arrays["image_index"] = arrays["image_index"] + 1
    np.savez(other, **arrays)
    with pytest.raises(FlowvaeError, match="different images"):
        figures.write_data("posteriors", {"grid": [study["grid"][0], other]}, tmp_path / "p.npz")


def test_gap_contours_titles_and_order_follow_per_image(figdata) -> None:
    data = figures.read_data("gap_contours", figdata["gap_contours"])
    fig = figures.REGISTRY["gap_contours"].draw(data)
    try:
        per_image = pd.read_csv(figdata["gap_distribution"])
        per_image = per_image[(per_image["variant"] == "standard") & (per_image["seed"] == 0)]
        gaps = per_image.set_index("index").loc[GRID_IMAGES, "gap"]
        expected_order = gaps.sort_values(ascending=False).index.tolist()
        axes = np.array(fig.axes[: len(GRID_IMAGES) * 7]).reshape(len(GRID_IMAGES), 7)
        for row, index in zip(axes, expected_order, strict=True):
            assert f"#{index})" in row[0].get_title()
            assert f"gap {gaps[index]:.2f} nats" in row[1].get_title()  # standard, true posterior
        assert "#5 (150.0" in fig._suptitle.get_text()  # largest gap of the whole test set
    finally:
        plt.close(fig)


def test_posterior_q_draws_the_variant_asked_for(figdata, tmp_path: Path) -> None:
    path = figdata["posteriors"]
    with pytest.raises(FlowvaeError, match="per variant"):
        figures.render("posterior", path, [tmp_path / "q.png"])
    with pytest.raises(FlowvaeError, match="no variant 'cotflow'"):
        figures.render("posterior", path, [tmp_path / "q.png"], "cotflow")
    fig = figures.REGISTRY["posterior"].draw(figures.read_data("posterior", path), "pcpmap")
    try:
        assert "pcpmap (seed 0)" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


def test_captions_link_their_figure_data() -> None:
    fig = figures.REGISTRY["posterior"]
    values = {field: "0" for field in registry.CAPTION_FIELDS if field != "variant"}
    text = registry.caption(fig, values, "results/figdata/posteriors.npz", "iaf")
    assert "**iaf**" in text and "`posteriors.npz`_" in text


def test_test_curve_data_hold_every_run_and_the_posters_curves(figdata):
    df = pd.read_csv(figdata["test_curve"])
    study = df[df["source"] == "study"]
    assert len(study) == len(VARIANTS) * len(SEEDS) * 20
    run = study[(study["variant"] == VARIANTS[1]) & (study["seed"] == SEEDS[0])]
    assert np.allclose(run["cpu_total"], 4.5 * np.arange(1, 21))  # cumulative CPU seconds
    poster = df[df["source"] == "poster"]
    assert set(poster["variant"]) == {"standard", "iaf", "pcpmap"}
    last = poster[poster["variant"] == "standard"].sort_values("epoch").iloc[-1]
    assert last["epoch"] == pytest.approx(500, abs=1) and last["test_loss"] == pytest.approx(
        108.1, abs=0.2
    )


def test_cost_tradeoff_uses_cpu_seconds_when_recorded(figdata):
    df = pd.read_csv(figdata["cost_tradeoff"])
    assert (df["clock"] == "cpu").all()
    totals = df[df["kind"] == "test_neg_elbo"]
    assert sorted(totals["seconds"].unique()) == [20 * (3.5 + k) for k in range(len(VARIANTS))]


def drawn(name: str, figdata: dict[str, Path]):
    """The matplotlib figure of ``name``, drawn from its figure data (close it after use)."""
    return figures.REGISTRY[name].draw(figures.read_data(name, data_of(name, figdata)))


def test_test_loss_draws_each_flow_minus_the_first_variant_per_seed(figdata):
    from scipy import stats

    df = pd.read_csv(figdata["test_loss"])
    fig = drawn("test_loss", figdata)
    try:
        paired = fig.axes[1]
        labels = [t.get_text() for t in paired.get_xticklabels()]
        assert labels == [f"{v}\nminus {VARIANTS[0]}" for v in VARIANTS[1:]]
        wide = df.pivot(index="seed", columns="variant", values="test_neg_elbo")
        d = (wide["iaf"] - wide["standard"]).to_numpy()
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        texts = [t.get_text() for t in paired.texts]
        assert f"{d.mean():+.2f}\n[{d.mean() - half:+.2f}, {d.mean() + half:+.2f}]" in texts
        means = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        assert f"mean {wide['standard'].mean():.2f}" in means[0]  # not on a seed's dot
    finally:
        plt.close(fig)


def test_tuning_draws_the_knobs_a_variant_switches_together_in_one_panel(figdata):
    fig = drawn("tuning", figdata)
    try:
        xlabels = [ax.get_xlabel() for ax in fig.axes]
        assert sorted(xlabels[:2]) == ["epochs", "lr"] and "switched together" in xlabels[2]
        assert len(fig.axes) == 3  # no panel per knob of a single variant
        assert "mean ± sd over 2 tuning seeds" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


def test_quadrature_check_draws_the_tolerance_of_its_check(figdata):
    from flowvae.figures.checks import TOLERANCE

    fig = drawn("quadrature_check", figdata)
    try:
        lines = [ln.get_ydata()[0] for ln in fig.axes[1].get_lines() if ln.get_linestyle() == "--"]
        assert TOLERANCE in lines  # the line a point must stay below
    finally:
        plt.close(fig)
