"""CIFAR-10/100, STL-10, ImageNet(-100) and image folders, each written in its official on-disk
format at tiny size and read through DataBundle, the code path of the pipeline."""

import inspect
import pickle

import numpy as np
import pytest
import torch
from conftest import loaded
from PIL import Image
from torchvision import transforms as T

from ssl_transfer.config import DataConfig, config_from_dict
from ssl_transfer.data import DataBundle, load_raw, multi_view_transform, normalise, view_params
from ssl_transfer.data.base import IMAGENET_MEAN, IMAGENET_STD
from ssl_transfer.data.folders import IMAGENET100_LIST
from ssl_transfer.data.stl10 import STLImages
from ssl_transfer.errors import ConfigError, DataError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def _no_env_data(monkeypatch):
    monkeypatch.delenv("SSL_TRANSFER_DATA", raising=False)


def assert_one_line_data_error(fn, *needles):
    with pytest.raises(DataError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# ----------------------------------------------------------------------------------------
# CIFAR
# ----------------------------------------------------------------------------------------


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar(root, name="cifar10", per_batch=6, n_test=8, seed=0):
    """Official layout; keys are byte strings as in the (Python 2) official files. Returns the
    (N, 3072) data rows and labels of train and test."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, files, key = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], b"labels"
        k, meta_file, meta = 10, "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                                  b"num_cases_per_batch": per_batch}
    else:
        folder, files, key = root / "cifar-100-python", ["train"], b"fine_labels"
        k, meta_file = 100, "meta"
        meta = {b"fine_label_names": [f"class{i:03d}".encode() for i in range(100)],
                b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
    folder.mkdir(parents=True)
    out = {}
    for split, names, n in (("train", files, per_batch if name == "cifar10" else 5 * per_batch),
                            ("test", ["test_batch" if name == "cifar10" else "test"], n_test)):
        rows, labels = [], []
        for fname in names:
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            lab = [int(x) for x in rng.integers(0, k, n)]
            lab[:2] = [0, 1]  # at least two classes everywhere
            d = {b"batch_label": fname.encode(), key: lab, b"data": data,
                 b"filenames": [f"img{i}.png".encode() for i in range(n)]}
            if name == "cifar100":
                d[b"coarse_labels"] = [x // 5 for x in lab]
            write_pickle(folder / fname, d)
            rows.append(data)
            labels += lab
        out[split] = (np.concatenate(rows), np.array(labels))
    write_pickle(folder / meta_file, meta)
    return folder, out


def cifar_bundle(root, **kw):
    cfg = DataConfig(**{"name": "cifar10", "root": str(root), "val_size": 6, "batch_size": 4,
                        "num_workers": 0, "eval_batch_size": 7, **kw})
    return DataBundle.from_config(cfg, seed=0)


def test_cifar10_pixels_labels_and_loaders_match_raw_bytes(tmp_path):
    _, raw_rows = make_cifar(tmp_path)
    b = cifar_bundle(tmp_path)
    raw = b.raw
    rows, labels = raw_rows["train"]
    assert raw.train_images.shape == (30, 32, 32, 3) and raw.test_images.shape == (8, 32, 32, 3)
    assert b.channels == 3 and b.image_size == 32 and b.num_classes == 10 and raw.classes == CIFAR10_NAMES
    # channel c of image k at (r, col) is byte c*1024 + r*32 + col of row k; batches in order 1..5
    for k, r, col, c in [(0, 0, 0, 0), (7, 3, 30, 0), (13, 31, 1, 1), (29, 17, 5, 2), (24, 0, 31, 2)]:
        assert raw.train_images[k, r, col, c] == rows[k, c * 1024 + r * 32 + col]
    np.testing.assert_array_equal(raw.train_labels, labels)
    np.testing.assert_array_equal(raw.test_labels, raw_rows["test"][1])
    planes = rows.reshape(-1, 3, 1024) / 255.0
    np.testing.assert_allclose(raw.mean, planes.mean(axis=(0, 2)), atol=1e-12)
    np.testing.assert_allclose(raw.std, planes.transpose(1, 0, 2).reshape(3, -1).std(axis=1), atol=1e-9)
    assert b.sizes() == {"train": 24, "eval_train": 24, "val": 6, "test": 8}

    # eval batches: (x, y), normalised test image k channel c at (r, col)
    xs, ys = zip(*b.eval_loader("test"))
    assert [len(y) for y in ys] == [7, 1]
    x, y = torch.cat(xs), torch.cat(ys)
    test_rows = raw_rows["test"][0]
    for k, r, col, c in [(0, 0, 0, 0), (5, 9, 2, 1), (7, 31, 31, 2)]:
        expected = (test_rows[k, c * 1024 + r * 32 + col] / 255.0 - raw.mean[c]) / raw.std[c]
        assert abs(x[k, c, r, col].item() - expected) < 1e-5
    np.testing.assert_array_equal(y.numpy(), raw_rows["test"][1])

    batch = next(iter(b.train_loader(seed=0, clean=True)))
    assert len(batch["views"]) == 2 and all(v.shape == (4, 3, 32, 32) for v in batch["views"])
    assert batch["label"].shape == (4,) and batch["index"].shape == (4,)
    train_x, train_y = loaded(b, "train")
    torch.testing.assert_close(batch["clean"], train_x[batch["index"]])
    assert torch.equal(batch["label"], train_y[batch["index"]])


def test_cifar100_fine_labels_and_root_at_the_folder_itself(tmp_path):
    folder, raw_rows = make_cifar(tmp_path, "cifar100", per_batch=4, n_test=5)
    for root in (tmp_path, folder):
        raw = load_raw("cifar100", str(root))
        assert raw.train_images.shape == (20, 32, 32, 3) and len(raw.classes) == 100
        assert raw.classes[7] == "class007" and raw.location == str(folder)
        np.testing.assert_array_equal(raw.train_labels, raw_rows["train"][1])
        rows = raw_rows["test"][0]
        assert raw.test_images[4, 10, 20, 1] == rows[4, 1024 + 10 * 32 + 20]


def test_input_size_override_resizes_array_images(tmp_path):
    make_cifar(tmp_path)
    b = cifar_bundle(tmp_path, input_size=16)
    assert b.image_size == 16
    batch = next(iter(b.train_loader(seed=0, clean=True)))
    assert batch["views"][0].shape == (4, 3, 16, 16) and batch["clean"].shape == (4, 3, 16, 16)
    x = torch.cat([bx for bx, _ in b.eval_loader("val")])
    assert x.shape == (6, 3, 16, 16)
    img = Image.fromarray(b.raw.train_images[b.val_idx[0]])
    tf = T.Compose([T.Resize((16, 16)), T.ToTensor(), T.Normalize(b.raw.mean, b.raw.std)])
    torch.testing.assert_close(x[0], tf(img))


@pytest.mark.parametrize("breakage,needles", [
    ("truncate", ["data_batch_2", "truncated or corrupt"]),
    ("gray", ["expected uint8 (N, 3072)", "(6, 1024)"]),
    ("int64", ["int64", "expected uint8 (N, 3072)"]),
    ("labels_short", ["is not a list of 6 integers"]),
    ("label_range", ["expected 0..9"]),
    ("no_key", ["lacks the key 'labels'"]),
    ("not_dict", ["not a dict"]),
    ("missing_file", ["lacks test_batch"]),
    ("missing_meta", ["lacks batches.meta"]),
    ("bad_meta", ["label_names"]),
])
def test_cifar_malformed_files(tmp_path, breakage, needles):
    folder, _ = make_cifar(tmp_path)
    path = folder / "data_batch_2"
    d = pickle.loads(path.read_bytes(), encoding="bytes")
    if breakage == "truncate":
        path.write_bytes(path.read_bytes()[:5000])
    elif breakage == "gray":
        d[b"data"] = d[b"data"][:, :1024].copy()
    elif breakage == "int64":
        d[b"data"] = d[b"data"].astype(np.int64)
    elif breakage == "labels_short":
        d[b"labels"] = d[b"labels"][:-1]
    elif breakage == "label_range":
        d[b"labels"][3] = 10
    elif breakage == "no_key":
        del d[b"labels"]
    elif breakage == "not_dict":
        d = [1, 2, 3]
    elif breakage == "missing_file":
        (folder / "test_batch").unlink()
    elif breakage == "missing_meta":
        (folder / "batches.meta").unlink()
    elif breakage == "bad_meta":
        write_pickle(folder / "batches.meta", {b"label_names": [b"a", b"b"]})
    if breakage in ("gray", "int64", "labels_short", "label_range", "no_key", "not_dict"):
        write_pickle(path, d)
    assert_one_line_data_error(lambda: load_raw("cifar10", str(tmp_path)), *needles,
                   "https://www.cs.toronto.edu/~kriz/cifar.html")


def test_cifar_missing_says_where_and_how(tmp_path):
    (tmp_path / "none").mkdir()
    assert_one_line_data_error(lambda: load_raw("cifar10", str(tmp_path / "none")), "cifar-10-batches-py",
                   str(tmp_path / "none"), "https://www.cs.toronto.edu/~kriz/cifar.html", "data.download: true")
    assert_one_line_data_error(lambda: load_raw("cifar100", None), "cifar-100-python", "both unset")


def test_download_goes_through_torchvision(tmp_path, monkeypatch):
    calls = []

    class Offline:
        def __init__(self, root, **kw):
            calls.append((root, kw))
            raise OSError("offline")

    monkeypatch.setattr("torchvision.datasets.CIFAR100", Offline)
    monkeypatch.setattr("torchvision.datasets.STL10", Offline)
    assert_one_line_data_error(lambda: load_raw("cifar100", str(tmp_path), download=True),
                   "downloading CIFAR-100", "OSError: offline")
    assert_one_line_data_error(lambda: load_raw("stl10", str(tmp_path), download=True), "downloading STL-10")
    assert calls == [(str(tmp_path), {"train": True, "download": True}),
                     (str(tmp_path), {"split": "train", "download": True})]
    assert_one_line_data_error(lambda: load_raw("cifar10", None, download=True), "needs data.root")
    assert_one_line_data_error(lambda: load_raw("imagenet", str(tmp_path), download=True), "not available", "image-net.org")


# ----------------------------------------------------------------------------------------
# STL-10
# ----------------------------------------------------------------------------------------


def make_stl10(root, n_train=10, n_test=6, n_unlabeled=8, seed=0, names=True):
    """Official binaries: image k is written as (3, 96 cols, 96 rows) planes, i.e. column-major."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        hwc = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        (folder / f"{split}_X.bin").write_bytes(hwc.transpose(0, 3, 2, 1).tobytes())
        labels = None
        if split != "unlabeled":
            labels = (np.arange(n) % 10 + 1).astype(np.uint8)  # 1-based in the file
            (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
        out[split] = (hwc, labels)
    if names:
        (folder / "class_names.txt").write_text("\n".join(
            ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    return folder, out


def test_stl10_matches_file_offsets_and_torchvision(tmp_path, monkeypatch):
    folder, _ = make_stl10(tmp_path)
    raw = load_raw("stl10", str(tmp_path))
    assert isinstance(raw.train_images, STLImages) and isinstance(raw.unlabeled_images, STLImages)
    assert raw.train_images.shape == (10, 96, 96, 3) and raw.count("unlabeled") == 8
    assert raw.classes[7] == "monkey" and raw.channels == 3 and raw.image_size == 96
    data = (folder / "train_X.bin").read_bytes()
    # channel c of image k at (row, col) is byte k*27648 + c*9216 + col*96 + row
    for k, row, col, c in [(0, 0, 0, 0), (3, 5, 70, 0), (9, 95, 1, 2), (6, 40, 41, 1)]:
        assert raw.train_images[k, row, col, c] == data[k * 27648 + c * 9216 + col * 96 + row]
    unl = (folder / "unlabeled_X.bin").read_bytes()
    assert raw.unlabeled_images[7, 2, 90, 1] == unl[7 * 27648 + 9216 + 90 * 96 + 2]
    np.testing.assert_array_equal(raw.train_labels, np.arange(10) % 10)
    # torchvision's own reader (its md5 check skipped: these are not the real files)
    import torchvision

    monkeypatch.setattr(torchvision.datasets.STL10, "_check_integrity", lambda self: True)
    tv = torchvision.datasets.STL10(str(tmp_path), split="test")
    for k in range(6):
        np.testing.assert_array_equal(raw.test_images[k], np.transpose(tv.data[k], (1, 2, 0)))
        assert np.asarray(tv[k][0]).tobytes() == raw.pil("test", k).tobytes()
    np.testing.assert_array_equal(raw.test_labels, tv.labels)


def test_stl10_is_memory_mapped_and_pickles_without_pixels(tmp_path):
    make_stl10(tmp_path, n_unlabeled=40)
    raw = load_raw("stl10", str(tmp_path))
    images = raw.unlabeled_images
    assert isinstance(images._array().base, np.memmap)
    blob = pickle.dumps(images)
    assert len(blob) < 1000  # path and count only; each DataLoader worker maps the file itself
    again = pickle.loads(blob)
    assert again._view is None and np.array_equal(again[39], images[39])


def test_stl10_splits_unlabeled_join_training_only(tmp_path):
    make_stl10(tmp_path, n_train=20, n_unlabeled=8)
    cfg = DataConfig(name="stl10", root=str(tmp_path), val_size=5, batch_size=4, num_workers=0,
                     views=3, input_size=32)
    b = DataBundle.from_config(cfg, seed=0)
    assert b.sizes() == {"train": 23, "eval_train": 15, "val": 5, "test": 6, "train_unlabeled": 8}
    assert (b.val_idx < 20).all() and (b.eval_train_idx < 20).all()
    assert not set(b.val_idx) & set(b.train_idx) and not set(b.val_idx) & set(b.eval_train_idx)
    assert set(range(20, 28)) <= set(b.train_idx.tolist())
    labels, seen_unlabeled = [], False
    for batch in b.train_loader(seed=1, clean=True):
        assert len(batch["views"]) == 3 and batch["views"][0].shape == (4, 3, 32, 32)
        assert batch["clean"].shape == (4, 3, 32, 32)
        labels += batch["label"].tolist()
        pool = b.train_idx[batch["index"].numpy()]
        np.testing.assert_array_equal((pool >= 20), batch["label"].numpy() == -1)
        seen_unlabeled |= bool((pool >= 20).any())
    assert seen_unlabeled and min(labels) == -1
    x, y = torch.cat([bx for bx, _ in b.eval_loader("train")]), torch.cat([by for _, by in b.eval_loader("train")])
    assert x.shape == (23, 3, 32, 32) and (y == -1).sum() == 8
    assert (torch.cat([by for _, by in b.eval_loader("eval_train")]) >= 0).all()
    # the unlabeled image at pool position p, resized like every clean image
    p = int(np.flatnonzero(b.train_idx == 25)[0])
    img = Image.fromarray(np.ascontiguousarray(b.raw.unlabeled_images[5]))
    tf = T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Normalize(b.raw.mean, b.raw.std)])
    torch.testing.assert_close(x[p], tf(img))

    without = DataBundle.from_config(DataConfig(name="stl10", root=str(tmp_path), val_size=5, batch_size=4,
                                                unlabeled=False), seed=0)
    assert without.sizes() == {"train": 15, "eval_train": 15, "val": 5, "test": 6}
    np.testing.assert_array_equal(without.val_idx, b.val_idx)


def test_stl10_native_size_eval_matches_bytes(tmp_path):
    folder, _ = make_stl10(tmp_path, n_unlabeled=2)
    b = DataBundle.from_config(DataConfig(name="stl10", root=str(tmp_path), val_size=3, eval_batch_size=4),
                               seed=0)
    assert b.image_size == 96
    x = torch.cat([bx for bx, _ in b.eval_loader("test")])
    data = (folder / "test_X.bin").read_bytes()
    k, row, col, c = 4, 11, 60, 2
    expected = (data[k * 27648 + c * 9216 + col * 96 + row] / 255.0 - b.raw.mean[c]) / b.raw.std[c]
    assert x.shape == (6, 3, 96, 96) and abs(x[k, c, row, col].item() - expected) < 1e-5
    # the training pool at native size mixes labelled and unlabeled images in one batch
    x, y = loaded(b, "train")
    assert x.shape == (9, 3, 96, 96)
    p = int(np.flatnonzero(b.train_idx == 10 + 1)[0])  # unlabeled image 1
    unl = (folder / "unlabeled_X.bin").read_bytes()
    expected = (unl[27648 + c * 9216 + col * 96 + row] / 255.0 - b.raw.mean[c]) / b.raw.std[c]
    assert y[p] == -1 and abs(x[p, c, row, col].item() - expected) < 1e-5


@pytest.mark.parametrize("breakage,needles", [
    ("truncate_X", ["train_X.bin", "not a positive multiple of 27648", "truncated"]),
    ("gray_X", ["train_X.bin", "not a positive multiple of 27648"]),
    ("short_y", ["train_y.bin", "9 labels for 10 images"]),
    ("label_zero", ["expected 1..10"]),
    ("label_eleven", ["expected 1..10"]),
    ("no_unlabeled", ["lacks unlabeled_X.bin", "data.unlabeled: false"]),
    ("no_test_y", ["lacks test_y.bin"]),
    ("names", ["class_names.txt", "9 classes"]),
])
def test_stl10_malformed_files(tmp_path, breakage, needles):
    folder, arrays = make_stl10(tmp_path)
    x = folder / "train_X.bin"
    if breakage == "truncate_X":
        x.write_bytes(x.read_bytes()[:-100])
    elif breakage == "gray_X":
        x.write_bytes(arrays["train"][0][:10, :, :, 0].tobytes())  # 10 one-channel 96x96 images
    elif breakage == "short_y":
        (folder / "train_y.bin").write_bytes(bytes(range(1, 10)))
    elif breakage == "label_zero":
        (folder / "train_y.bin").write_bytes(bytes([0] + list(range(1, 10))))
    elif breakage == "label_eleven":
        (folder / "train_y.bin").write_bytes(bytes([11] + list(range(1, 10))))
    elif breakage == "no_unlabeled":
        (folder / "unlabeled_X.bin").unlink()
    elif breakage == "no_test_y":
        (folder / "test_y.bin").unlink()
    elif breakage == "names":
        (folder / "class_names.txt").write_text("\n".join("abcdefghi"))
    assert_one_line_data_error(lambda: load_raw("stl10", str(tmp_path)), *needles, "https://cs.stanford.edu/~acoates/stl10/")


def test_stl10_grayscale_file_with_a_multiple_of_three_images_is_caught_by_labels(tmp_path):
    folder, arrays = make_stl10(tmp_path, n_train=9)
    (folder / "train_X.bin").write_bytes(arrays["train"][0][:, :, :, 0].tobytes())  # 9 one-channel images
    assert_one_line_data_error(lambda: load_raw("stl10", str(tmp_path)), "9 labels for 3 images")


def test_stl10_without_unlabeled_file_when_not_asked_and_default_names(tmp_path):
    folder, _ = make_stl10(tmp_path, names=False)
    (folder / "unlabeled_X.bin").unlink()
    raw = load_raw("stl10", str(folder), unlabeled=False)
    assert raw.count("unlabeled") == 0 and raw.classes[0] == "airplane" and len(raw.classes) == 10
    (tmp_path / "x").mkdir()
    assert_one_line_data_error(lambda: load_raw("stl10", str(tmp_path / "x")), "stl10_binary",
                   "https://cs.stanford.edu/~acoates/stl10/", "data.download: true")


# ----------------------------------------------------------------------------------------
# ImageNet, ImageNet-100, image folders
# ----------------------------------------------------------------------------------------

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]


def make_tree(root, classes, per_class=3, test="val", test_per_class=2, ext=".JPEG", seed=0, sizes=None):
    rng = np.random.default_rng(seed)
    sizes = sizes or [(40, 30), (50, 64), (36, 36)]
    for split, n in (("train", per_class), (test, test_per_class)):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                w, h = sizes[(ci + i) % len(sizes)]
                mode = "L" if (ci + i) % 5 == 4 else "RGB"
                arr = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{c}_{i}{ext}", quality=95)
    return root


def folder_bundle(root, name="imagenet", **kw):
    cfg = DataConfig(**{"name": name, "root": str(root), "val_size": 3, "batch_size": 4, "num_workers": 0,
                        "input_size": 32, "eval_batch_size": 5, **kw})
    return DataBundle.from_config(cfg, seed=0)


def test_imagenet_folders_stream_lazily_with_center_crop(tmp_path):
    make_tree(tmp_path, WNIDS)
    b = folder_bundle(tmp_path)
    raw = b.raw
    assert not b.array_backed and raw.classes == WNIDS and b.num_classes == 4 and b.channels == 3
    assert b.sizes() == {"train": 9, "eval_train": 9, "val": 3, "test": 8}
    assert raw.mean == IMAGENET_MEAN and raw.std == IMAGENET_STD
    np.testing.assert_array_equal(raw.train_labels, np.repeat(np.arange(4), 3))
    assert raw.train_files.dtype.kind == "S"  # paths as bytes, not Python objects
    batch = next(iter(b.train_loader(seed=0, clean=True)))
    assert [v.shape for v in batch["views"]] == [(4, 3, 32, 32)] * 2 and batch["clean"].shape == (4, 3, 32, 32)
    pool = b.train_idx[batch["index"].numpy()]
    np.testing.assert_array_equal(batch["label"].numpy(), raw.train_labels[pool])
    tf = T.Compose([T.Resize(37), T.CenterCrop(32), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    with Image.open(raw.path("train", pool[0])) as img:
        torch.testing.assert_close(batch["clean"][0], tf(img.convert("RGB")))
    xs, ys = zip(*b.eval_loader("test"))
    x, y = torch.cat(xs), torch.cat(ys)
    assert [len(t) for t in ys] == [5, 3] and x.shape == (8, 3, 32, 32)
    np.testing.assert_array_equal(y.numpy(), np.repeat(np.arange(4), 2))
    for k in (0, 3, 7):
        with Image.open(tmp_path / "val" / WNIDS[k // 2] / f"{WNIDS[k // 2]}_{k % 2}.JPEG") as img:
            torch.testing.assert_close(x[k], tf(img.convert("RGB")))
    assert torch.equal(torch.cat([bx for bx, _ in b.eval_loader("test")]), x)  # deterministic


def test_imagenet_default_input_is_224_center_crop_of_256(tmp_path):
    make_tree(tmp_path, WNIDS[:2], per_class=3, test_per_class=1)
    b = folder_bundle(tmp_path, input_size=None, val_size=2)
    assert b.image_size == 224
    tf = b.eval_transform()
    assert [type(t).__name__ for t in tf.transforms] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert tf.transforms[0].size == 256 and tf.transforms[1].size == (224, 224)
    x, y = next(iter(b.eval_loader("test")))
    assert x.shape == (2, 3, 224, 224) and y.tolist() == [0, 1]


def test_imagenet100_ships_the_cmc_class_list(tmp_path):
    wnids = IMAGENET100_LIST.read_text().split()
    assert len(wnids) == 100 == len(set(wnids)) and all(len(w) == 9 and w[0] == "n" for w in wnids)
    assert wnids[0] == "n02869837" and wnids[-1] == "n02090622" and "n02123045" in wnids  # tabby cat
    assert "n01440764" not in wnids  # tench: ImageNet-1k class 0, not in ImageNet-100
    make_tree(tmp_path, wnids + ["n01440764"], per_class=1, test_per_class=1, sizes=[(8, 8)])
    b = folder_bundle(tmp_path, name="imagenet100", val_size=10, input_size=8)
    assert b.num_classes == 100 and b.raw.classes == sorted(wnids)
    assert b.sizes() == {"train": 90, "eval_train": 90, "val": 10, "test": 100}
    full = folder_bundle(tmp_path, name="imagenet", val_size=10, input_size=8)
    assert full.num_classes == 101


def test_class_list_restricts_classes(tmp_path):
    make_tree(tmp_path, WNIDS)
    (tmp_path / "three.txt").write_text(f"# my classes\n{WNIDS[3]}\n{WNIDS[0]}\n\n{WNIDS[1]}\n")
    b = folder_bundle(tmp_path, class_list=str(tmp_path / "three.txt"))
    assert b.raw.classes == [WNIDS[0], WNIDS[1], WNIDS[3]]
    np.testing.assert_array_equal(b.raw.test_labels, [0, 0, 1, 1, 2, 2])
    assert all(WNIDS[2].encode() not in f for f in b.raw.train_files)


def test_image_folder_prefers_test_then_val(tmp_path):
    make_tree(tmp_path, ["cat", "dog"], test="test", ext=".png")
    b = folder_bundle(tmp_path, name="image_folder")
    assert b.raw.classes == ["cat", "dog"] and b.raw.test_dir.endswith("test") and b.sizes()["test"] == 4
    (tmp_path / "test").rename(tmp_path / "val")
    b = folder_bundle(tmp_path, name="image_folder")
    assert b.raw.test_dir.endswith("val")
    x, _ = next(iter(b.eval_loader("val")))
    assert x.shape == (3, 3, 32, 32)
    # image_folder test split may lack a class; ImageNet's val may not
    for f in (tmp_path / "val" / "dog").iterdir():
        f.unlink()
    (tmp_path / "val" / "dog").rmdir()
    assert folder_bundle(tmp_path, name="image_folder").sizes()["test"] == 2


def test_val_split_disjoint_and_deterministic_for_every_format(tmp_path):
    make_cifar(tmp_path / "c")
    make_stl10(tmp_path / "s", n_train=20)
    make_tree(tmp_path / "i", WNIDS)
    for name, root in (("cifar10", "c"), ("stl10", "s"), ("imagenet", "i")):
        cfg = DataConfig(name=name, root=str(tmp_path / root), val_size=4, batch_size=2, input_size=16)
        a, b = DataBundle.from_config(cfg, seed=0), DataBundle.from_config(cfg, seed=5)
        np.testing.assert_array_equal(a.val_idx, b.val_idx)
        assert not set(a.val_idx) & set(a.train_idx) and not set(a.val_idx) & set(a.eval_train_idx)
        assert len(a.val_idx) == 4 and len(set(a.val_idx.tolist()) | set(a.eval_train_idx.tolist())) == \
            a.raw.count("train")
        other = DataBundle.from_config(DataConfig(name=name, root=str(tmp_path / root), val_size=4,
                                                  split_seed=1), seed=0)
        assert not np.array_equal(other.val_idx, a.val_idx)


@pytest.mark.parametrize("breakage,needles", [
    ("no_train", ["ImageNet not found", "no train/ folder", "image-net.org"]),
    ("no_val", ["has train/ but no val/"]),
    ("flat_val", ["holds 2 images but no class folders", "valprep.sh"]),
    ("empty_class", ["n01484850", "holds no image files"]),
    ("unknown_val_class", ["n09999999", "no counterpart"]),
    ("val_lacks_class", ["n01491361", "have no folder in"]),
    ("one_class", ["1 class folder", "at least 2"]),
])
def test_imagenet_layout_errors(tmp_path, breakage, needles):
    make_tree(tmp_path, WNIDS)
    val = tmp_path / "val"

    def rmtree(d):
        for f in d.iterdir():
            f.unlink()
        d.rmdir()

    if breakage == "no_train":
        (tmp_path / "train").rename(tmp_path / "training")
    elif breakage == "no_val":
        for c in WNIDS:
            rmtree(val / c)
        val.rmdir()
    elif breakage == "flat_val":
        for c in WNIDS:
            rmtree(val / c)
        make_tree(tmp_path / "flat", WNIDS[:1], per_class=2)
        for f in (tmp_path / "flat" / "train" / WNIDS[0]).iterdir():
            f.rename(val / f.name)
    elif breakage == "empty_class":
        for f in (tmp_path / "train" / WNIDS[2]).iterdir():
            f.unlink()
        (tmp_path / "train" / WNIDS[2] / "notes.txt").write_text("no images")
    elif breakage == "unknown_val_class":
        (val / "n09999999").mkdir()
    elif breakage == "val_lacks_class":
        rmtree(val / WNIDS[3])
    elif breakage == "one_class":
        for c in WNIDS[1:]:
            rmtree(tmp_path / "train" / c)
            rmtree(val / c)
    assert_one_line_data_error(lambda: load_raw("imagenet", str(tmp_path)), *needles)


def test_class_list_errors(tmp_path):
    make_tree(tmp_path, WNIDS)
    assert_one_line_data_error(lambda: load_raw("imagenet100", str(tmp_path)), "100 classes of data.class_list",
                   "imagenet100.txt", "n02869837")
    lst = tmp_path / "l.txt"
    assert_one_line_data_error(lambda: load_raw("imagenet", str(tmp_path), class_list=str(lst)), "cannot read data.class_list")
    lst.write_text(f"{WNIDS[0]}\n{WNIDS[0]}\n{WNIDS[1]}\n")
    assert_one_line_data_error(lambda: load_raw("imagenet", str(tmp_path), class_list=str(lst)), "more than once")
    lst.write_text(f"{WNIDS[0]}\n")
    assert_one_line_data_error(lambda: load_raw("imagenet", str(tmp_path), class_list=str(lst)), "at least 2")
    lst.write_text(f"{WNIDS[0]}\nn00000001\n")
    assert_one_line_data_error(lambda: load_raw("image_folder", str(tmp_path), class_list=str(lst)), "n00000001",
                   "have no folder in")


def test_corrupt_image_file_is_named(tmp_path):
    make_tree(tmp_path, WNIDS[:2])
    bad = tmp_path / "train" / WNIDS[1] / f"{WNIDS[1]}_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])
    raw = load_raw("imagenet", str(tmp_path))
    i = [k for k in range(raw.count("train")) if raw.path("train", k) == str(bad)][0]
    assert_one_line_data_error(lambda: raw.pil("train", i), str(bad), "corrupt")


# ----------------------------------------------------------------------------------------
# Views and config
# ----------------------------------------------------------------------------------------


def _defaults(cls):
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_view_presets_follow_lightly():
    from lightly.transforms import MoCoV2Transform, SimCLRTransform

    keys = ["cj_prob", "cj_strength", "cj_bright", "cj_contrast", "cj_sat", "cj_hue", "min_scale",
            "random_gray_scale", "gaussian_blur", "hf_prob"]
    for method, cls in (("simclr", SimCLRTransform), ("mocov2", MoCoV2Transform)):
        lightly_defaults = {k: _defaults(cls)[k] for k in keys}
        assert view_params("imagenet", method) == lightly_defaults
        assert view_params("image_folder", method) == lightly_defaults
    # lightly's CIFAR-10 benchmark: SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)
    assert view_params("cifar10", "simclr") == {**view_params("imagenet", "simclr"), "cj_strength": 0.5,
                                                "gaussian_blur": 0.0}
    assert view_params("cifar100", "mocov2") == {**view_params("imagenet", "mocov2"), "gaussian_blur": 0.0}
    assert view_params("stl10", "simclr")["cj_strength"] == 0.5 and view_params("stl10", "simclr")["gaussian_blur"] == 0.5
    fm = view_params("fashion_mnist", "simclr")
    assert (fm["min_scale"], fm["cj_prob"], fm["cj_strength"], fm["hf_prob"], fm["random_gray_scale"],
            fm["gaussian_blur"]) == (0.25, 0.8, 0.5, 0.5, 0.0, 0.0)
    assert view_params("cifar10", "mocov2", min_scale=0.5, gaussian_blur=None)["min_scale"] == 0.5
    with pytest.raises(ValueError, match="method"):
        view_params("cifar10", "byol")


def test_fashion_mnist_views_unchanged_from_before():
    from lightly.transforms.simclr_transform import SimCLRViewTransform

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
    old = SimCLRViewTransform(input_size=28, cj_prob=0.8, cj_strength=0.5, min_scale=0.25, random_gray_scale=0.0,
                              gaussian_blur=0.0, hf_prob=0.5, normalize={"mean": [0.3], "std": [0.35]})
    new = multi_view_transform(views=2, input_size=28, mean=[0.3], std=[0.35])
    torch.manual_seed(3)
    expected = [old(img), old(img)]
    torch.manual_seed(3)
    got = new(img)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def _crop(bundle, **kw):
    return bundle.view_transform(**kw).transforms[0].transform.transforms[0]


def test_bundle_views_follow_method_and_config(tmp_path):
    make_cifar(tmp_path)
    simclr = cifar_bundle(tmp_path)
    assert _crop(simclr).scale == (0.08, 1.0) and tuple(_crop(simclr).size) == (32, 32)
    moco = DataBundle.from_config(simclr.cfg, seed=0, method="mocov2")
    assert _crop(moco).scale == (0.2, 1.0)
    assert _crop(simclr, method="mocov2").scale == (0.2, 1.0)
    assert _crop(cifar_bundle(tmp_path, min_scale=0.5)).scale == (0.5, 1.0)
    batch = next(iter(moco.train_loader(seed=0)))
    assert batch["views"][0].shape == (4, 3, 32, 32)


def test_config_keys_for_datasets():
    cfg = config_from_dict({"data": {"name": "stl10", "unlabeled": False, "input_size": 64}})
    assert cfg.data.name == "stl10" and not cfg.data.unlabeled and cfg.data.input_size == 64
    assert cfg.data.min_scale is None and cfg.data.gaussian_blur is None
    for name in ("cifar10", "cifar100", "imagenet", "imagenet100", "image_folder"):
        assert config_from_dict({"data": {"name": name}}).data.name == name
    assert config_from_dict({"data": {"name": "imagenet", "class_list": "x.txt"}}).data.class_list == "x.txt"
    for data, needle in [({"name": "cifar10", "class_list": "x.txt"}, "data.class_list applies to"),
                         ({"input_size": 1}, "data.input_size"), ({"cj_prob": 1.5}, "data.cj_prob"),
                         ({"min_scale": 0}, "data.min_scale"), ({"name": "cifar"}, "did you mean 'cifar10'")]:
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
            config_from_dict({"data": data})


def test_normalise_is_what_eval_batches_use(tmp_path):
    make_cifar(tmp_path)
    b = cifar_bundle(tmp_path)
    x = torch.cat([bx for bx, _ in b.eval_loader("val")])
    assert torch.equal(x, normalise(b.raw.train_images[b.val_idx], b.raw.mean, b.raw.std))
