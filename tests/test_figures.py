"""Every figure renders from small synthetic inputs (Gaussian posteriors on a grid)."""

from __future__ import annotations

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

VARIANTS = ("standard", "iaf", "pcpmap")
SEEDS = (0, 1)
GRID_IMAGES = np.array([3, 7, 11])  # positions in the test set drawn on the grid
N_TEST = 40
CFG = {"variants": {v: {} for v in VARIANTS}, "sweeps": {"lr": {"key": "train.lr"}}}


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
    """Write grid.npz, history.csv, per_image.csv for every run, a metrics.csv and a sweep CSV."""
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
                "seconds": 4.0 + k,
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
                "train_seconds": 20 * (4.0 + k + 0.2 * seed),
            })  # fmt: skip
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
    files["metrics"] = [root / "metrics.csv"]
    files["sweep"] = [root / "sweep_lr.csv"]
    return files


# The synthetic files standing in for each kind of input file the registry names.
SYNTHETIC = {
    "grid": "grid",
    "gap_grid": "grid",
    "per_image": "per_image",
    "table": "metrics",
    "history": "history",
    "check": "check",
    "selection": "selection",
}


def inputs_for(name: str, files: dict[str, list[Path]]) -> list[Path]:
    """The input files of figure ``name``, by the registry (a per-variant figure: one grid)."""
    fig = figures.REGISTRY[name]
    if not fig.inputs:  # the sweep figure reads a sweep's metrics table
        return files["sweep"]
    out: list[Path] = []
    for kind, _ in fig.inputs:
        got = files[SYNTHETIC[kind]]
        out += got[2:3] if fig.per_variant else got
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Synthetic outputs of 3 variants x 2 seeds (built once for the module)."""
    return build_study(tmp_path_factory.mktemp("study"))


def test_every_registry_input_is_a_study_file() -> None:
    kinds = set(study_mod.RUN_FILES) | set(study_mod.STUDY_FILES)
    for fig in figures.REGISTRY.values():
        assert {kind for kind, _ in fig.inputs} <= kinds, fig.name
        assert {seeds for _, seeds in fig.inputs} <= {"figure_seed", "all_seeds"}, fig.name
        assert fig.caption and fig.category, fig.name


@pytest.mark.parametrize("name", sorted(figures.REGISTRY))
def test_figure_renders_png_and_pdf(name: str, study, tmp_path: Path) -> None:
    outputs = [tmp_path / f"{name}.png", tmp_path / "pdf" / f"{name}.pdf"]
    figures.render(name, inputs_for(name, study), outputs, CFG)
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


def test_unknown_figure_lists_the_names(study, tmp_path: Path) -> None:
    with pytest.raises(FlowvaeError, match="unknown figure 'nope'.*posterior_panel"):
        figures.render("nope", study["metrics"], [tmp_path / "x.png"], CFG)


def test_missing_input_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "metrics.csv"
    with pytest.raises(FlowvaeError, match=str(missing)):
        figures.render("test_loss", [missing], [tmp_path / "x.png"], CFG)


def test_gap_distribution_needs_exact_evaluation(study, tmp_path: Path) -> None:
    df = pd.read_csv(study["per_image"][0])
    df["gap"] = np.nan
    df["exact_nll"] = np.nan
    df.to_csv(tmp_path / "per_image.csv", index=False)
    with pytest.raises(FlowvaeError, match="exact evaluation"):
        figures.render("gap_distribution", [tmp_path / "per_image.csv"], [tmp_path / "g.png"], CFG)
    assert not (tmp_path / "g.png").exists()
    assert plt.get_fignums() == []


def test_grid_without_a_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "grid.npz"
    np.savez(path, variant=np.array("standard"), seed=np.array(0))
    with pytest.raises(FlowvaeError, match="images") as info:
        figures.render("samples", [path], [tmp_path / "s.png"], CFG)
    assert str(path) in str(info.value)


def test_grid_without_contours_draws_pictures_only(study, tmp_path: Path) -> None:
    """A latent space other than 2-D gives no contour arrays: pictures work, contours explain."""
    with np.load(study["grid"][0]) as npz:
        arrays = {k: npz[k] for k in npz.files if k not in figures.CONTOUR_KEYS}
    np.savez(tmp_path / "grid.npz", **arrays)
    figures.render("reconstructions", [tmp_path / "grid.npz"], [tmp_path / "r.png"], CFG)
    assert (tmp_path / "r.png").stat().st_size > 0
    with pytest.raises(FlowvaeError, match="latent_dim 2"):
        figures.render("posterior_panel", [tmp_path / "grid.npz"], [tmp_path / "p.png"], CFG)


def test_panel_refuses_grids_of_different_images(study, tmp_path: Path) -> None:
    other = tmp_path / "grid.npz"
    write_grid(other, "iaf", 0, np.array([1, 2, 3]))
    with np.load(other) as npz:
        arrays = dict(npz)
    arrays["image_index"] = arrays["image_index"] + 1
    np.savez(other, **arrays)
    with pytest.raises(FlowvaeError, match="different images"):
        figures.render("posterior_panel", [study["grid"][0], other], [tmp_path / "p.png"], CFG)


def test_gap_contours_titles_and_order_follow_per_image(study) -> None:
    fig = figures.gap_contours(study["per_image"] + study["grid"], CFG)
    try:
        per_image = pd.read_csv(study["per_image"][0])  # standard, seed 0
        gaps = per_image.set_index("index").loc[GRID_IMAGES, "gap"]
        expected_order = gaps.sort_values(ascending=False).index.tolist()
        axes = np.array(fig.axes[: len(GRID_IMAGES) * 7]).reshape(len(GRID_IMAGES), 7)
        for row, index in zip(axes, expected_order, strict=True):
            assert f"#{index})" in row[0].get_title()
            assert f"gap {gaps[index]:.2f} nats" in row[1].get_title()  # standard, true posterior
        assert "#5 (150.0)" in fig._suptitle.get_text()  # largest gap of the whole test set
    finally:
        plt.close(fig)


def test_posterior_q_takes_one_variant(study, tmp_path: Path) -> None:
    with pytest.raises(FlowvaeError, match="one variant"):
        figures.render("posterior", study["grid"], [tmp_path / "q.png"], CFG)


def test_variant_order_follows_config() -> None:
    assert figures._order(["pcpmap", "standard", "iaf"], CFG) == ["standard", "iaf", "pcpmap"]
    assert figures._order(["b", "standard", "a"], {}) == ["standard", "a", "b"]


def test_pdf_figures_are_byte_identical_between_renders(tmp_path):
    table = tmp_path / "metrics.csv"
    table.write_text(
        "variant,seed,test_neg_elbo,seconds_per_epoch\n"
        "standard,0,120.0,1.0\nstandard,1,121.0,1.1\niaf,0,119.0,2.0\niaf,1,119.5,2.1\n"
    )
    outs = [tmp_path / "a.pdf", tmp_path / "b.pdf"]
    for out in outs:
        figures.render("test_loss", [table], [out], {})
        time.sleep(1.1)  # a creation date would differ
    assert outs[0].read_bytes() == outs[1].read_bytes()
