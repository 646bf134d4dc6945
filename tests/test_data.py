import gzip
import struct

import numpy as np
import pytest
import torch
from conftest import loaded

from ssl_transfer.config import DataConfig
from ssl_transfer.data import DataBundle, read_idx, split_train_val
from ssl_transfer.data.sources import DEBIAN_FASHION_MNIST, FASHION_MNIST_FILES, load_fashion_mnist, load_raw
from ssl_transfer.errors import DataError


def write_idx(path, array: np.ndarray, compress=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return data


def make_fashion_mnist(folder, n_train=40, n_test=12, seed=0, sub=""):
    rng = np.random.default_rng(seed)
    d = folder / sub
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": np.arange(n_train) % 10,
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": np.arange(n_test) % 10,
    }
    for key, stem in FASHION_MNIST_FILES.items():
        write_idx(d / f"{stem}.gz", arrays[key])
    return arrays


def test_read_idx_matches_raw_bytes(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = write_idx(tmp_path / "x.gz", arr)
    out = read_idx(tmp_path / "x.gz")
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    # element (i, j, k) is the byte at offset 16 + i*12 + j*4 + k of the decompressed stream
    for i, j, k in [(0, 0, 0), (1, 2, 3), (1, 0, 2)]:
        assert out[i, j, k] == raw[16 + i * 12 + j * 4 + k]
    write_idx(tmp_path / "y", arr, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "y"), arr)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_against_raw_bytes():
    raw = load_fashion_mnist()
    assert raw.train_images.shape == (60000, 28, 28) and raw.test_images.shape == (10000, 28, 28)
    assert sorted(np.unique(raw.train_labels)) == list(range(10))
    with gzip.open(DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz") as f:
        head = f.read(16 + 2 * 784)
    assert struct.unpack(">IIII", head[:16]) == (2051, 60000, 28, 28)
    np.testing.assert_array_equal(raw.train_images[1].ravel(), np.frombuffer(head[16 + 784:], np.uint8))
    with gzip.open(DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz") as f:
        lab = f.read(8 + 5)
    assert struct.unpack(">II", lab[:8]) == (2049, 10000)
    assert list(raw.test_labels[:5]) == list(lab[8:])
    assert len(raw.mean) == 1 and 0.25 < raw.mean[0] < 0.32  # Fashion-MNIST mean ~0.286


def test_truncated_and_bad_files(tmp_path):
    arr = np.zeros((4, 28, 28), dtype=np.uint8)
    data = write_idx(tmp_path / "t", arr, compress=False)
    (tmp_path / "t").write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "t")
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "bad.gz")


def test_lookup_order_root_then_env_then_debian(tmp_path, monkeypatch):
    root, env = tmp_path / "root", tmp_path / "env"
    make_fashion_mnist(root, n_train=20, seed=1)
    make_fashion_mnist(env, n_train=30, seed=2, sub="FashionMNIST/raw")  # torchvision layout
    monkeypatch.setenv("SSL_TRANSFER_DATA", str(env))
    assert len(load_fashion_mnist(str(root)).train_images) == 20
    assert len(load_fashion_mnist(None).train_images) == 30
    # where it was found is said (log line, results.json's data.found_via)
    def via(root):
        return DataBundle.from_config(DataConfig(root=root, val_size=5, batch_size=4), seed=0).found_via
    assert via(str(root)) == "data.root" and via(None) == "$SSL_TRANSFER_DATA"


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("ssl_transfer.data.sources.DEBIAN_FASHION_MNIST", tmp_path / "none")
    monkeypatch.delenv("SSL_TRANSFER_DATA", raising=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        load_fashion_mnist(str(tmp_path / "empty"))
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "data.download" in msg and "\n" not in msg


def test_partial_dataset_names_missing_files(tmp_path):
    make_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte.gz"):
        load_fashion_mnist(str(tmp_path))


def test_download_needs_root():
    with pytest.raises(DataError, match="needs data.root"):
        load_fashion_mnist(None, download=True)


def test_split_is_disjoint_deterministic_and_complete():
    tr, va = split_train_val(100, 15, seed=3)
    assert len(va) == 15 and len(tr) == 85 and not set(tr) & set(va)
    assert sorted([*tr, *va]) == list(range(100))
    tr2, va2 = split_train_val(100, 15, seed=3)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, split_train_val(100, 15, seed=4)[1])
    with pytest.raises(DataError, match="val_size"):
        split_train_val(10, 10, seed=0)


def test_bundle_views_and_clean_images(tmp_path):
    make_fashion_mnist(tmp_path, n_train=40, n_test=12)
    cfg = DataConfig(root=str(tmp_path), val_size=8, batch_size=4, num_workers=0, views=3, test_subset=10)
    bundle = DataBundle.from_config(cfg, seed=0)
    assert bundle.sizes() == {"train": 32, "eval_train": 32, "val": 8, "test": 10}
    batch = next(iter(bundle.train_loader(seed=0, clean=True)))
    views, labels, index = batch["views"], batch["label"], batch["index"]
    assert len(views) == 3 and views[0].shape == (4, 1, 28, 28) and labels.shape == (4,)
    assert not torch.equal(views[0], views[1])  # independent augmentations
    # the clean image is the normalised, un-augmented training image at that index
    train_x, _ = loaded(bundle, "train")
    torch.testing.assert_close(batch["clean"], train_x[index])
    x, y = loaded(bundle, "val")
    raw_val = bundle.raw.train_images[bundle.val_idx]
    expected = (raw_val / 255.0 - bundle.raw.mean[0]) / bundle.raw.std[0]
    np.testing.assert_allclose(x[:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), bundle.raw.train_labels[bundle.val_idx])


def test_batch_larger_than_dataset(tmp_path):
    make_fashion_mnist(tmp_path, n_train=20)
    bundle = DataBundle.from_config(DataConfig(root=str(tmp_path), val_size=5, batch_size=64), seed=0)
    with pytest.raises(DataError, match="exceeds the 15 training images"):
        bundle.train_loader(seed=0)


def test_digits_needs_no_install():
    raw = load_raw("digits")
    assert raw.train_images.shape[1:] == (8, 8) and raw.train_images.dtype == np.uint8
    assert len(raw.train_images) + len(raw.test_images) == 1797
    assert raw.train_images.max() == 255


@pytest.mark.parametrize("shape", [(37, 5, 6), (37, 5, 6, 3)])
def test_channel_stats_from_histograms_equal_numpy_over_every_pixel(shape):
    """Per-channel mean and std from the 256-bin histograms equal float64 numpy over all pixels,
    across chunk boundaries (chunk 8 of 37 images), for grey and RGB; other dtypes are refused."""
    from ssl_transfer.data import channel_stats

    images = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    x = images.astype(np.float64) / 255.0
    axes = tuple(range(x.ndim)) if x.ndim == 3 else tuple(range(x.ndim - 1))
    mean, std = channel_stats(images, chunk=8)
    assert mean == pytest.approx(list(np.atleast_1d(x.mean(axis=axes))), rel=1e-12)
    assert std == pytest.approx(list(np.atleast_1d(x.std(axis=axes))), rel=1e-12)
    with pytest.raises(ValueError, match="uint8"):
        channel_stats(x)
