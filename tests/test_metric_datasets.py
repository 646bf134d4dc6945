"""CUB-200-2011, Cars-196, SOP loaders and the class split (ssl_transfer.data.metric), on tiny
trees written in the official layouts."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from ssl_transfer.data import metric
from ssl_transfer.data.metric import load_cars, load_cub, load_sop, split_classes
from ssl_transfer.errors import ConfigError, DataError

# images per official class id; train classes first, then test classes
CUB = {1: 2, 2: 3, 3: 2, 101: 2, 150: 3, 200: 2}  # 7 train, 7 test
CARS = {1: 2, 5: 2, 98: 3, 99: 2, 150: 2, 196: 2}  # 7 train, 6 test
SOP_TRAIN = {1: 2, 2: 3, 3: 2}  # class_id -> images
SOP_TEST = {11319: 2, 11320: 2, 11321: 3}


def jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8 + seed % 3, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG")


def make_cub(root: Path) -> Path:
    base = root / "CUB_200_2011"
    names = {c: f"{c:03d}.Bird_{c}" for c in range(1, 201)}
    images, labels, k = [], [], 0
    for c, count in CUB.items():
        for j in range(count):
            k += 1
            rel = f"{names[c]}/Bird_{c}_{j:04d}_{k}.jpg"
            jpeg(base / "images" / rel, k)
            images.append(f"{k} {rel}")
            labels.append(f"{k} {c}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "classes.txt").write_text("".join(f"{c} {n}\n" for c, n in names.items()))
    (base / "train_test_split.txt").write_text("".join(f"{i} {i % 2}\n" for i in range(1, k + 1)))  # unused
    return base


def make_cars(root: Path) -> Path:
    base = root / "cars196"
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    rows, k = [], 0
    for c, count in CARS.items():
        for _ in range(count):
            k += 1
            rel = f"car_ims/{k:06d}.jpg"
            jpeg(base / rel, 100 + k)
            rows.append((rel, np.uint8(1), np.uint8(2), np.uint8(7), np.uint8(6), np.uint8(c), np.uint8(k % 2)))
    annotations = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])  # 1xN struct array, as the official file
    for j, row in enumerate(rows):
        annotations[0, j] = row
    class_names = np.empty((1, 196), dtype=object)  # 1x196 cell array
    for c in range(196):
        class_names[0, c] = f"Make Model {c + 1} 2012"
    scipy.io.savemat(base / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return base


def make_sop(root: Path) -> Path:
    base = root / "Stanford_Online_Products"
    k = 0
    for index, classes in (("Ebay_train.txt", SOP_TRAIN), ("Ebay_test.txt", SOP_TEST)):
        lines = ["image_id class_id super_class_id path"]
        for c, count in classes.items():
            folder = ("bicycle_final", "chair_final")[c % 2]
            for j in range(count):
                k += 1
                rel = f"{folder}/{1000 + c}_{j}.JPG"
                jpeg(base / rel, 200 + k)
                lines.append(f"{k} {c} {c % 2 + 1} {rel}")
        (base / index).write_text("\n".join(lines) + "\n")
    return base


@pytest.fixture
def tiny_counts(monkeypatch):
    counts = {"cub": (7, 7), "cars": (7, 6), "sop": (7, 7)}
    for key, value in counts.items():
        monkeypatch.setitem(metric.EXPECTED_COUNTS, key, value)
    monkeypatch.delenv("SSL_TRANSFER_DATA", raising=False)
    return counts


MAKERS = {"cub": (make_cub, load_cub), "cars": (make_cars, load_cars), "sop": (make_sop, load_sop)}


def test_cub_splits_labels_and_names(tmp_path, tiny_counts):
    base = make_cub(tmp_path)
    ds = load_cub(str(tmp_path))
    assert ds.count("train") == 7 and ds.count("test") == 7 and ds.location == str(base)
    assert ds.labels("train").tolist() == [0, 0, 1, 1, 1, 2, 2] and ds.labels("test").tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert ds.classes == ["001.Bird_1", "002.Bird_2", "003.Bird_3"]
    assert ds.test_classes == ["101.Bird_101", "150.Bird_150", "200.Bird_200"]
    assert ds.train_dir == str(base / "images") and ds.mean == [0.485, 0.456, 0.406] and ds.channels == 3
    assert all(Path(ds.path("test", i)).parent.name in ds.test_classes for i in range(7))  # label ↔ folder
    assert load_cub(str(base)).count("train") == 7  # data.root may be the dataset folder itself


def test_cars_splits_labels_and_names(tmp_path, tiny_counts):
    base = make_cars(tmp_path)
    ds = load_cars(str(tmp_path))
    assert ds.count("train") == 7 and ds.count("test") == 6
    assert ds.labels("train").tolist() == [0, 0, 1, 1, 2, 2, 2] and ds.labels("test").tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.classes == ["Make Model 1 2012", "Make Model 5 2012", "Make Model 98 2012"]
    assert ds.test_classes == ["Make Model 99 2012", "Make Model 150 2012", "Make Model 196 2012"]
    assert ds.path("train", 0) == str(base / "car_ims" / "000001.jpg")
    assert ds.path("test", 0) == str(base / "car_ims" / "000008.jpg")  # the 'test' flag is ignored


def test_sop_splits_labels_and_names(tmp_path, tiny_counts):
    base = make_sop(tmp_path)
    ds = load_sop(str(tmp_path))
    assert ds.count("train") == 7 and ds.count("test") == 7
    assert ds.labels("train").tolist() == [0, 0, 1, 1, 1, 2, 2] and ds.labels("test").tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert ds.classes == ["chair_final/1001", "bicycle_final/1002", "chair_final/1003"]
    assert ds.test_classes[0] == "chair_final/12319"
    assert ds.path("test", 6) == str(base / "chair_final" / "12321_2.JPG")


@pytest.mark.parametrize("key", ["cub", "cars", "sop"])
def test_zero_shot_classes_are_disjoint_and_pixels_equal_the_files(tmp_path, tiny_counts, key):
    make, load = MAKERS[key]
    make(tmp_path)
    ds = load(str(tmp_path))
    assert not set(ds.classes) & set(ds.test_classes)
    assert set(ds.labels("train")) == set(range(len(ds.classes)))
    assert set(ds.labels("test")) == set(range(len(ds.test_classes)))
    assert ds.train_files.dtype.kind == "S" and ds.train_labels.dtype == np.int64
    for split in ("train", "test"):
        for i in range(ds.count(split)):
            with Image.open(ds.path(split, i)) as img:
                expected = np.asarray(img.convert("RGB"))
            assert np.array_equal(np.asarray(ds.pil(split, i)), expected)
    paths = {ds.path(s, i) for s in ("train", "test") for i in range(ds.count(s))}
    assert len(paths) == ds.count("train") + ds.count("test")


def test_dataset_found_through_the_environment(tmp_path, tiny_counts, monkeypatch):
    make_sop(tmp_path)
    monkeypatch.setenv("SSL_TRANSFER_DATA", str(tmp_path))
    assert load_sop(None).count("test") == 7
    (tmp_path / "elsewhere").mkdir()
    assert load_sop(str(tmp_path / "elsewhere")).count("test") == 7  # data.root first, then the env


@pytest.mark.parametrize("key", ["cub", "cars", "sop"])
def test_a_listed_file_missing_on_disk_fails_the_count_check(tmp_path, tiny_counts, key):
    make, load = MAKERS[key]
    make(tmp_path)
    victim = Path(load(str(tmp_path)).path("test", 1))
    victim.unlink()
    with pytest.raises(DataError) as err:
        load(str(tmp_path))
    msg = str(err.value)
    expected = tiny_counts[key][1]
    assert "\n" not in msg
    assert "test split" in msg and f"{expected - 1} images found, {expected} expected" in msg
    assert "1 listed images are missing on disk" in msg and victim.name in msg and "partial download" in msg
    assert "data.verify_counts: false" in msg
    ds = load(str(tmp_path), verify_counts=False)  # a deliberately different copy: the missing file is left out
    assert ds.count("test") == expected - 1 and str(victim) not in {ds.path("test", i) for i in range(expected - 1)}


@pytest.mark.parametrize("key", ["cub", "sop"])
def test_an_extra_listed_file_fails_the_count_check(tmp_path, tiny_counts, key, monkeypatch):
    make, load = MAKERS[key]
    make(tmp_path)
    monkeypatch.setitem(metric.EXPECTED_COUNTS, key, (6, tiny_counts[key][1]))  # the index lists one more
    with pytest.raises(DataError, match="train split .*7 images found, 6 expected; .* lists 7 images where the "
                                        "official one lists 6: an edited or different index"):
        load(str(tmp_path))
    assert load(str(tmp_path), verify_counts=False).count("train") == 7


def test_resource_fork_files_listed_in_an_index_are_named(tmp_path, tiny_counts):
    base = make_cub(tmp_path)
    fork = "001.Bird_1/._Bird_1_0000_1.jpg"
    (base / "images" / fork).write_bytes(b"\x00\x05\x16\x07")  # AppleDouble junk, as a Mac leaves it
    with open(base / "images.txt", "a") as f:
        f.write(f"15 {fork}\n")
    with open(base / "image_class_labels.txt", "a") as f:
        f.write("15 1\n")
    for verify in (True, False):
        with pytest.raises(DataError, match=r"images.txt lists 1 macOS resource-fork file\(s\) as train images "
                                            r"\('001.Bird_1/._Bird_1_0000_1.jpg'\)"):
            load_cub(str(tmp_path), verify_counts=verify)


@pytest.mark.parametrize("key", ["cub", "cars", "sop"])
def test_stray_files_in_image_folders_do_not_change_a_split(tmp_path, tiny_counts, key):
    make, load = MAKERS[key]
    make(tmp_path)
    before = load(str(tmp_path))
    folder = Path(before.path("train", 0)).parent
    (folder / f"._{Path(before.path('train', 0)).name}").write_bytes(b"\x00\x05\x16\x07")
    jpeg(folder / "extra.jpg", 999)
    after = load(str(tmp_path))
    assert np.array_equal(after.train_files, before.train_files) and np.array_equal(after.test_files, before.test_files)


@pytest.mark.parametrize("key, expected", [
    ("cub", "CUB-200-2011 not found: expected 'CUB_200_2011/images.txt' under data.root .*vision.caltech.edu"),
    ("cars", "Cars-196 not found: expected 'cars196/cars_annos.mat' under data.root .*car_ims.tgz"),
    ("sop", "Stanford Online Products not found: expected 'Stanford_Online_Products/Ebay_train.txt' "
            "under data.root .*cvgl.stanford.edu/projects/lifted_struct"),
])
def test_missing_dataset_says_what_where_and_how(tmp_path, tiny_counts, key, expected):
    load = MAKERS[key][1]
    with pytest.raises(DataError, match=expected) as err:
        load(str(tmp_path))
    assert f"data.root = {tmp_path}" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="data.root and \\$SSL_TRANSFER_DATA are both unset"):
        load(None)
    with pytest.raises(DataError, match="must be downloaded by hand; set data.download: false and (download|get) "):
        load(str(tmp_path), download=True)


def test_partial_trees_and_malformed_indices(tmp_path, tiny_counts):
    base = make_cub(tmp_path)
    (base / "classes.txt").unlink()
    with pytest.raises(DataError, match="CUB-200-2011 in .* has images.txt but lacks classes.txt"):
        load_cub(str(tmp_path))
    base = make_sop(tmp_path / "sop")
    with open(base / "Ebay_test.txt", "a") as f:
        f.write("oops 1 2\n")
    with pytest.raises(DataError, match=r"line 9 of .*Ebay_test.txt' is 'oops 1 2', expected '<image_id> <class_id>"):
        load_sop(str(tmp_path / "sop"))
    base = make_cars(tmp_path / "cars")
    scipy.io.savemat(base / "cars_annos.mat", {"something": np.zeros(3)})
    with pytest.raises(DataError, match="has no struct array 'annotations'"):
        load_cars(str(tmp_path / "cars"))
    (base / "cars_annos.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="cannot read .*cars_annos.mat"):
        load_cars(str(tmp_path / "cars"))


def test_split_classes_takes_whole_classes_deterministically():
    labels = np.repeat(np.arange(10), [3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    train, val = split_classes(labels, val_classes=3, seed=0)
    assert len(set(labels[val])) == 3 and len(set(labels[train])) == 7
    assert not set(labels[val]) & set(labels[train])  # every image of a class on one side
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0) and train.dtype == np.int64
    again = split_classes(labels, val_classes=3, seed=0)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    chosen = {tuple(sorted(set(labels[split_classes(labels, 3, seed)[1]]))) for seed in range(10)}
    assert len(chosen) > 1  # the seed matters
    train, val = split_classes(labels * 7 + 100, val_classes=8, seed=1)  # any label values
    assert len(set(labels[val])) == 8 and len(set(labels[train])) == 2


@pytest.mark.parametrize("val_classes, match", [
    (9, "would leave 9 validation and 1 training classes out of 10; each side needs at least 2: set "
        "data.val_classes between 2 and 8"),
    (1, "would leave 1 validation and 9 training classes"),
    (0, "must be a whole number of classes >= 1"),
    (2.5, "must be a whole number of classes >= 1"),
])
def test_split_classes_errors(val_classes, match):
    with pytest.raises(ConfigError, match=match):
        split_classes(np.repeat(np.arange(10), 2), val_classes, seed=0)
