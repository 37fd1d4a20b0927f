"""flowvae.data: download/verification, IDX parsing, prepare and load_prepared."""

from __future__ import annotations

import gzip
import hashlib
import io
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from flowvae import data, fetch
from flowvae.errors import DataError, StaleRunError
from flowvae.spec import DataSpec

DATA_CFG = {
    "mirror": None,
    "digits": [1, 2, 3, 4],
    "n_val": 20,
    "max_train": None,
    "max_test": None,
    "split_seed": 0,
    "binarize": "dynamic",
    "binarize_seed": 0,
}
REAL_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
REAL_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def cfg(**changes) -> DataSpec:
    return DataSpec(**{**DATA_CFG, **changes, "digits": tuple(changes.get("digits", (1, 2, 3, 4)))})


def make_mirror(src: Path, dest: Path, gz: bool) -> Path:
    """Copy the fixture's raw files into ``dest``, gzip-compressed when ``gz``."""
    dest.mkdir()
    for name in data.FILES:
        raw = (src / name).read_bytes()
        if gz:
            (dest / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (dest / name).write_bytes(raw)
    return dest


def leftovers(folder: Path) -> list[str]:
    """Names in ``folder`` other than the four final files (temp files, partial downloads)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in data.FILES)


@pytest.fixture(autouse=True)
def _no_env_mirror(monkeypatch):
    monkeypatch.delenv(fetch.MIRROR_ENV, raising=False)


# ----------------------------------------------------------------------------- read_idx


def test_read_idx_round_trip(idx_dir):
    images = data.read_idx(idx_dir.path / data.TRAIN_IMAGES)
    labels = data.read_idx(idx_dir.path / data.TRAIN_LABELS)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (300, 28, 28)
    assert labels.dtype == torch.uint8 and tuple(labels.shape) == (300,)
    assert torch.bincount(labels.long(), minlength=10).tolist() == list(idx_dir.train_counts)
    # pixel 0 encodes the label and pixels 1-2 the index (see conftest)
    flat = images.reshape(300, -1).long()
    assert torch.equal(flat[:, 0], labels.long())
    assert torch.equal(flat[:, 1] * 256 + flat[:, 2], torch.arange(300))
    test_labels = data.read_idx(idx_dir.path / data.TEST_LABELS)
    assert torch.bincount(test_labels.long(), minlength=10).tolist() == list(idx_dir.test_counts)


def test_read_idx_truncated_names_file(idx_dir, tmp_path):
    bad = tmp_path / "short-idx3-ubyte"
    bad.write_bytes((idx_dir.path / data.TEST_IMAGES).read_bytes()[:-1])
    with pytest.raises(DataError, match="short-idx3-ubyte"):
        data.read_idx(bad)


def test_read_idx_rejects_gzip(idx_dir, tmp_path):
    gz = tmp_path / "labels.gz"
    gz.write_bytes(gzip.compress((idx_dir.path / data.TEST_LABELS).read_bytes()))
    with pytest.raises(DataError, match="magic number"):
        data.read_idx(gz)


# ----------------------------------------------------------------------------- download


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_download_from_local_mirror(idx_dir, tmp_path, gz):
    mirror = make_mirror(idx_dir.path, tmp_path / "mirror", gz)
    out = tmp_path / "out"
    paths = fetch.download(out, mirror=mirror, checksums=idx_dir.sha256)
    assert [p.name for p in paths] == list(data.FILES)
    for p in paths:
        assert p.read_bytes() == (idx_dir.path / p.name).read_bytes()
    assert leftovers(out) == []
    assert sorted(p.name for p in mirror.iterdir()) == sorted(
        f"{n}.gz" if gz else n for n in data.FILES
    )


def test_download_skips_verified_and_refetches_bad(idx_dir, tmp_path):
    mirror = make_mirror(idx_dir.path, tmp_path / "mirror", gz=True)
    out = tmp_path / "out"
    fetch.download(out, mirror=mirror, checksums=idx_dir.sha256)
    # good copies are kept: the mirror may lose all its files
    labels_gz = mirror / f"{data.TEST_LABELS}.gz"
    saved = labels_gz.read_bytes()
    for p in mirror.iterdir():
        p.unlink()
    fetch.download(out, mirror=mirror, checksums=idx_dir.sha256)
    # a corrupted copy in out is replaced from the mirror
    labels_gz.write_bytes(saved)
    target = out / data.TEST_LABELS
    target.write_bytes(target.read_bytes()[:-5] + b"\xff" * 5)
    fetch.download(out, mirror=mirror, checksums=idx_dir.sha256)
    assert target.read_bytes() == (idx_dir.path / data.TEST_LABELS).read_bytes()
    assert leftovers(out) == []


def test_download_checksum_mismatch(idx_dir, tmp_path):
    mirror = make_mirror(idx_dir.path, tmp_path / "mirror", gz=False)
    out = tmp_path / "out"
    wrong = dict(idx_dir.sha256, **{data.TEST_IMAGES: "0" * 64})
    with pytest.raises(DataError) as err:
        fetch.download(out, mirror=mirror, checksums=wrong)
    msg = str(err.value)
    assert data.TEST_IMAGES in msg and "0" * 64 in msg and idx_dir.sha256[data.TEST_IMAGES] in msg
    assert not (out / data.TEST_IMAGES).exists()
    assert leftovers(out) == []
    assert (mirror / data.TEST_IMAGES).is_file()  # the mirror's copy is never deleted
    # an existing bad copy in out_dir is deleted too
    (out / data.TEST_IMAGES).write_bytes(b"junk")
    with pytest.raises(DataError, match=data.TEST_IMAGES):
        fetch.download(out, mirror=mirror, checksums=wrong)
    assert not (out / data.TEST_IMAGES).exists()


def test_download_pinned_checksums_reject_fake_files(idx_dir, tmp_path):
    mirror = make_mirror(idx_dir.path, tmp_path / "mirror", gz=True)
    with pytest.raises(DataError, match=fetch.SHA256[data.TRAIN_IMAGES]):
        fetch.download(tmp_path / "out", mirror=mirror)


def test_download_truncated_gzip(idx_dir, tmp_path):
    mirror = make_mirror(idx_dir.path, tmp_path / "mirror", gz=True)
    gz = mirror / f"{data.TRAIN_LABELS}.gz"
    gz.write_bytes(gz.read_bytes()[:100])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=f"{data.TRAIN_LABELS}.*truncated or corrupt gzip"):
        fetch.download(out, mirror=mirror, checksums=idx_dir.sha256)
    assert not (out / data.TRAIN_LABELS).exists()
    assert leftovers(out) == []


def test_download_missing_mirror_folder(tmp_path):
    missing = tmp_path / "no-such-mirror"
    with pytest.raises(DataError, match="no-such-mirror"):
        fetch.download(tmp_path / "out", mirror=missing)


def test_download_file_missing_from_mirror(idx_dir, tmp_path):
    mirror = make_mirror(idx_dir.path, tmp_path / "mirror", gz=True)
    (mirror / f"{data.TEST_LABELS}.gz").unlink()
    with pytest.raises(DataError, match=f"{data.TEST_LABELS} is missing"):
        fetch.download(tmp_path / "out", mirror=mirror, checksums=idx_dir.sha256)


def test_download_env_var_mirror(idx_dir, tmp_path, monkeypatch):
    mirror = make_mirror(idx_dir.path, tmp_path / "mirror", gz=True)
    monkeypatch.setenv(fetch.MIRROR_ENV, str(mirror))
    out = tmp_path / "out"
    fetch.download(out, checksums=idx_dir.sha256)
    assert sorted(p.name for p in out.iterdir()) == sorted(data.FILES)
    monkeypatch.setenv(fetch.MIRROR_ENV, str(tmp_path / "gone"))
    with pytest.raises(DataError, match=f"gone.*{fetch.MIRROR_ENV}"):
        fetch.download(tmp_path / "out2", checksums=idx_dir.sha256)


def test_download_no_network(tmp_path, monkeypatch):
    urls = []

    def offline(request, *args, **kwargs):
        urls.append(request.full_url)
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=fetch.MIRROR_ENV) as err:
        fetch.download(out)
    assert data.TRAIN_IMAGES in str(err.value) and "data.mirror" in str(err.value)
    from torchvision.datasets import MNIST

    assert urls == [m + data.TRAIN_IMAGES + ".gz" for m in MNIST.mirrors]
    assert leftovers(out) == []


def test_download_over_network_falls_back_to_next_mirror(idx_dir, tmp_path, monkeypatch):
    """First mirror is down, second serves the .gz files: all four arrive verified."""
    first = fetch._public_mirrors()[0]

    def fake(request, *args, **kwargs):
        url = request.full_url
        if url.startswith(first):
            raise urllib.error.URLError("connection refused")
        name = url.rsplit("/", 1)[1].removesuffix(".gz")
        return io.BytesIO(gzip.compress((idx_dir.path / name).read_bytes()))

    monkeypatch.setattr(urllib.request, "urlopen", fake)
    out = tmp_path / "out"
    fetch.download(out, checksums=idx_dir.sha256)
    for name in data.FILES:
        assert (out / name).read_bytes() == (idx_dir.path / name).read_bytes()
    assert leftovers(out) == []


# ----------------------------------------------------------------------------- prepare


def index_of(x: torch.Tensor) -> torch.Tensor:
    """Original index encoded by conftest in pixels 1-2 (valid for grey-level images only)."""
    px = torch.round(x * 255).long()
    return px[:, 1] * 256 + px[:, 2]


def test_prepare_digits_and_sizes(idx_dir, tmp_path):
    out = data.prepare(idx_dir.path, tmp_path / "d.pt", cfg(n_val=20, max_test=30))
    n_kept = sum(idx_dir.train_counts[d] for d in (1, 2, 3, 4))  # 130
    assert out["meta"]["n_val"] == 20 and out["meta"]["n_train"] == n_kept - 20
    assert out["train"].shape == (n_kept - 20, 784) and out["val"].shape == (20, 784)
    assert out["test"].shape == (30, 784)
    for key in ("train_labels", "val_labels", "test_labels"):
        assert set(out[key].unique().tolist()) <= {1, 2, 3, 4}
        assert out[key].dtype == torch.int64
    assert set(out["train_labels"].tolist()) == {1, 2, 3, 4}
    # labels belong to their images: pixel 0 of each fixture image is its label
    assert torch.equal(torch.round(out["train"][:, 0] * 255).long(), out["train_labels"])
    # train and val partition the kept training images
    raw_y = data.read_idx(idx_dir.path / data.TRAIN_LABELS).long()
    all_idx = torch.cat([index_of(out["train"]), out["val_index"]]).sort().values
    assert torch.equal(
        all_idx, torch.nonzero(torch.isin(raw_y, torch.tensor([1, 2, 3, 4]))).flatten()
    )
    assert torch.equal(index_of(out["train"]), out["train_index"])
    # test: the first 30 kept test images in MNIST order
    test_y = data.read_idx(idx_dir.path / data.TEST_LABELS).long()
    kept = torch.nonzero(torch.isin(test_y, torch.tensor([1, 2, 3, 4]))).flatten()
    assert torch.equal(out["test_index"], kept[:30])
    assert torch.equal(out["test_labels"], test_y[kept[:30]])
    assert out["meta"]["sha256"] == idx_dir.sha256


def test_prepare_max_train_and_full_test(idx_dir, tmp_path):
    out = data.prepare(idx_dir.path, tmp_path / "d.pt", cfg(digits=[0, 9], max_train=7))
    assert out["train"].shape == (7, 784) and out["val"].shape == (20, 784)
    assert out["test"].shape[0] == idx_dir.test_counts[0] + idx_dir.test_counts[9]
    assert set(out["test_labels"].tolist()) == {0, 9}


def test_prepare_binarization(idx_dir, tmp_path):
    dyn = data.prepare(idx_dir.path, tmp_path / "dyn.pt", cfg())
    for key in ("val", "test"):
        assert dyn[key].dtype == torch.float32
        assert set(dyn[key].unique().tolist()) == {0.0, 1.0}
    assert dyn["binarize"] == "dynamic" and dyn["train"].dtype == torch.float32
    grey = dyn["train"][(dyn["train"] > 0) & (dyn["train"] < 1)]
    assert grey.numel() > 0.9 * dyn["train"].numel()  # random pixels: almost all grey
    assert 0.0 <= dyn["train"].min() and dyn["train"].max() <= 1.0
    # binarized pixels follow their grey values: mean close to the grey mean
    val_grey = data.read_idx(idx_dir.path / data.TRAIN_IMAGES).reshape(300, -1)[dyn["val_index"]]
    assert abs(dyn["val"].mean().item() - (val_grey.float() / 255).mean().item()) < 0.02
    static = data.prepare(idx_dir.path, tmp_path / "static.pt", cfg(binarize="static"))
    assert static["binarize"] == "static"
    assert set(static["train"].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(static["val"], dyn["val"]) and torch.equal(static["test"], dyn["test"])
    # documented seeds with s = binarize_seed: val 3s, test 3s + 1, static train 3s + 2
    other = data.prepare(idx_dir.path, tmp_path / "b1.pt", cfg(binarize="static", binarize_seed=1))
    raw_train = data.read_idx(idx_dir.path / data.TRAIN_IMAGES).reshape(300, -1).float() / 255
    raw_test = data.read_idx(idx_dir.path / data.TEST_IMAGES).reshape(100, -1).float() / 255
    for key, grey_x, seed in [
        ("val", raw_train[other["val_index"]], 3),
        ("test", raw_test[other["test_index"]], 4),
        ("train", raw_train[other["train_index"]], 5),
    ]:
        expected = data.binarize(grey_x, torch.Generator().manual_seed(seed))
        assert torch.equal(other[key], expected), key
    assert not torch.equal(other["val"], dyn["val"]) and not torch.equal(other["test"], dyn["test"])


def test_prepare_deterministic_and_seeded(idx_dir, tmp_path):
    a = data.prepare(idx_dir.path, tmp_path / "a.pt", cfg(binarize="static"))
    b = data.prepare(idx_dir.path, tmp_path / "b.pt", cfg(binarize="static"))
    for key in ("train", "train_labels", "val", "val_labels", "test", "test_labels", "test_index"):
        assert torch.equal(a[key], b[key]), key
    assert a["meta"] == b["meta"]
    c = data.prepare(idx_dir.path, tmp_path / "c.pt", cfg(binarize="static", split_seed=1))
    assert not torch.equal(a["val_index"], c["val_index"])
    assert set(a["val_index"].tolist()) != set(c["val_index"].tolist())
    assert torch.equal(a["test_index"], c["test_index"])  # the test set ignores split_seed


def test_prepare_errors(idx_dir, tmp_path):
    n_kept = sum(idx_dir.train_counts[d] for d in (1, 2, 3, 4))
    with pytest.raises(DataError, match="data.n_val"):
        data.prepare(idx_dir.path, tmp_path / "d.pt", cfg(n_val=n_kept))
    assert not (tmp_path / "d.pt").exists()
    data.prepare(idx_dir.path, tmp_path / "d.pt", cfg(n_val=n_kept - 1))  # one left: fine
    (idx_dir.path / data.TEST_IMAGES).write_bytes(b"\x00\x00\x08\x03")
    with pytest.raises(DataError, match=data.TEST_IMAGES):
        data.prepare(idx_dir.path, tmp_path / "e.pt", cfg())


def test_prepare_digit_without_data(idx_dir, tmp_path):
    labels = idx_dir.path / data.TRAIN_LABELS
    raw = bytearray(labels.read_bytes())
    raw[8:] = bytes(b if b != 7 else 6 for b in raw[8:])  # no 7 in the training set any more
    labels.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="data.digits"):
        data.prepare(idx_dir.path, tmp_path / "d.pt", cfg(digits=[7]))


def test_load_prepared(idx_dir, tmp_path):
    path = tmp_path / "d.pt"
    saved = data.prepare(idx_dir.path, path, cfg(binarize="static"))
    loaded = data.load_prepared(path)  # weights_only=True
    assert loaded["meta"] == saved["meta"] and loaded["binarize"] == "static"
    assert torch.equal(loaded["train"], saved["train"]) and torch.equal(
        loaded["test"], saved["test"]
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(DataError, match="missing.pt"):
        data.load_prepared(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="bad.pt"):
        data.load_prepared(bad)
    # the file carries the key of its data settings: a job asking for others is refused
    assert data.load_prepared(path, cfg(binarize="static"))["meta"]["key"] == saved["meta"]["key"]
    with pytest.raises(StaleRunError, match="other data settings"):
        data.load_prepared(path, cfg(binarize="static", n_val=21))


def test_binarize_is_seeded():
    x = torch.full((10000,), 0.3)
    a = data.binarize(x, torch.Generator().manual_seed(5))
    b = data.binarize(x, torch.Generator().manual_seed(5))
    c = data.binarize(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {0.0, 1.0} and abs(a.mean().item() - 0.3) < 0.02
    assert torch.equal(
        data.binarize(torch.tensor([0.0, 1.0]), torch.Generator()), torch.tensor([0.0, 1.0])
    )


# ----------------------------------------------------------------------------- real MNIST


def test_real_download_checksums_and_counts(real_raw_dir):
    for name in data.FILES:
        path = real_raw_dir / name
        assert path.stat().st_size == fetch.SIZES[name]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == fetch.SHA256[name]
    train_y = data.read_idx(real_raw_dir / data.TRAIN_LABELS).long()
    test_y = data.read_idx(real_raw_dir / data.TEST_LABELS).long()
    assert torch.bincount(train_y, minlength=10).tolist() == REAL_TRAIN_COUNTS
    assert torch.bincount(test_y, minlength=10).tolist() == REAL_TEST_COUNTS
    train_x = data.read_idx(real_raw_dir / data.TRAIN_IMAGES)
    assert tuple(train_x.shape) == (60000, 28, 28)
    assert tuple(data.read_idx(real_raw_dir / data.TEST_IMAGES).shape) == (10000, 28, 28)
    mean = train_x.numpy().mean(dtype=np.float64) / 255
    assert mean == pytest.approx(0.1307, abs=5e-5)


def test_real_prepare_digits_1234(real_raw_dir, tmp_path):
    out = data.prepare(real_raw_dir, tmp_path / "d.pt", cfg(n_val=2000))
    assert out["train"].shape == (6742 + 5958 + 6131 + 5842 - 2000, 784)
    assert out["val"].shape == (2000, 784)
    assert out["test"].shape == (1135 + 1032 + 1010 + 982, 784) == (4159, 784)
    assert torch.bincount(out["test_labels"], minlength=10).tolist()[1:5] == [1135, 1032, 1010, 982]
    assert out["meta"]["sha256"] == fetch.SHA256
    assert set(out["test"].unique().tolist()) == {0.0, 1.0}
