"""CUB-200-2011, Cars-196 and Stanford Online Products in the zero-shot metric-learning protocol.

Each loader returns a :class:`MetricDataset` (a :class:`~ssl_transfer.data.base.FileDataset`)
whose ``train`` split holds the training classes and whose ``test`` split holds the *unseen*
test classes (disjoint classes: retrieval on classes never trained on). Labels are remapped to
0..K-1 within each split, in the order of the official class ids; ``classes`` names the train
classes, ``test_classes`` the test classes. Images are read lazily with PIL; normalisation uses
the ImageNet mean and std. A validation split comes from :func:`split_classes` (whole classes of
the train split), never from the test classes.

On disk, under ``data.root`` (or ``$SSL_TRANSFER_DATA``; the named folder or the root itself)::

    CUB_200_2011/images.txt               "<image_id> <path>"        (path relative to images/)
                 image_class_labels.txt   "<image_id> <class_id>"    (1..200)
                 classes.txt              "<class_id> <name>"
                 images/<class folder>/<file>.jpg
    cars196/cars_annos.mat                struct array ``annotations`` (relative_im_path, class
                                          1..196, bbox_*, test) and cell array ``class_names``
            car_ims/000001.jpg ...
    Stanford_Online_Products/Ebay_train.txt, Ebay_test.txt
                                          header, then "<image_id> <class_id> <super_class_id> <path>"
                             <super class>_final/<product>_<k>.JPG

| dataset | train split                      | test split                       |
|---------|----------------------------------|----------------------------------|
| CUB     | classes 1-100, 5,864 images      | classes 101-200, 5,924 images    |
| Cars    | classes 1-98, 8,054 images       | classes 99-196, 8,131 images     |
| SOP     | Ebay_train.txt: 11,318 classes, 59,551 | Ebay_test.txt: 11,316 classes, 60,502 |

CUB's ``train_test_split.txt`` and Cars' ``test`` flag belong to the classification protocol
and are not used. SOP class names are ``<super class folder>/<product id>`` (from the first
image of the class).

**The index files are the truth.** A split holds the images its index lists (CUB's text files,
``cars_annos.mat``, ``Ebay_*.txt``), never what a folder scan finds, so stray files in the image
folders (macOS ``._*`` resource forks, thumbnails) cannot change a split. An index that lists a
``._*`` file is an error naming it. With ``verify_counts`` (the default) a split must hold exactly
the official number of images (:data:`EXPECTED_COUNTS`), all present on disk, or the loader stops
with one line naming the split, the counts, the likely cause (a partial download or extraction,
an edited index) and the fix. ``verify_counts=False`` (``data.verify_counts: false``) is for a
deliberately different copy: listed images missing on disk are then left out, with a warning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .base import IMAGENET_MEAN, IMAGENET_STD, FileDataset, find_dataset_dir, searched

log = logging.getLogger("ssl_transfer")

#: Official (train, test) image counts of each dataset; the loaders check against them.
EXPECTED_COUNTS = {"cub": (5864, 5924), "cars": (8054, 8131), "sop": (59551, 60502)}
TITLES = {"cub": "CUB-200-2011", "cars": "Cars-196", "sop": "Stanford Online Products"}
HOW_TO_GET = {
    "cub": ("download CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/ and unpack it "
            "into data.root (CUB_200_2011/images.txt, CUB_200_2011/images/...)"),
    "cars": ("get car_ims.tgz and cars_annos.mat (the release of all 16,185 images) from the Stanford Cars page "
             "https://ai.stanford.edu/~jkrause/cars/car_dataset.html or its Kaggle mirror and put them in "
             "data.root/cars196/ (cars196/cars_annos.mat, cars196/car_ims/000001.jpg ...)"),
    "sop": ("download Stanford_Online_Products.zip from https://cvgl.stanford.edu/projects/lifted_struct/ and "
            "unpack it into data.root (Stanford_Online_Products/Ebay_train.txt, Ebay_test.txt, *_final/)"),
}
#: The first class id of the test split (CUB, Cars); classes below it are the train split.
FIRST_TEST_CLASS = {"cub": 101, "cars": 99}


@dataclass
class MetricDataset(FileDataset):
    """A :class:`FileDataset` whose ``train`` and ``test`` splits have disjoint classes.

    ``train_labels`` index ``classes`` (the train classes), ``test_labels`` index
    ``test_classes``; both are 0..K-1 in the order of the official class ids.
    """

    test_classes: list[str] = field(default_factory=list)


@dataclass
class _Split:
    """One split as read from its index: paths relative to the image folder and official class ids."""

    name: str  # "train" / "test"
    what: str  # e.g. "classes 1-100"
    paths: list[str]
    class_ids: list[int]


def _no_download(key: str) -> DataError:
    return DataError(f"data.download is not available for {TITLES[key]}: it must be downloaded by hand; set "
                     f"data.download: false and {HOW_TO_GET[key]}")


def _locate(key: str, root: str | None, folder: str, marker: str, others: tuple[str, ...]) -> Path:
    base = find_dataset_dir(root, folder, lambda p: (p / marker).is_file())
    if base is None:
        raise DataError(f"{TITLES[key]} not found: expected '{folder}/{marker}' under data.root ({searched(root)}); "
                        f"{HOW_TO_GET[key]}")
    missing = [f for f in others if not (base / f).exists()]
    if missing:
        raise DataError(f"{TITLES[key]} in '{base}' has {marker} but lacks {', '.join(missing)}; {HOW_TO_GET[key]}")
    return base


def _rows(key: str, path: Path, fields: int, form: str, header: str | None = None,
          numeric: int | None = None) -> list[list[str]]:
    """The non-blank lines of a text index, each split into ``fields`` fields (the last one
    keeps any spaces), the first ``numeric`` (default ``fields - 1``) of them integers; a line
    starting with ``header`` is skipped."""
    numeric = fields - 1 if numeric is None else numeric
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {TITLES[key]} index '{path}' ({type(e).__name__}); {HOW_TO_GET[key]}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or (header and line.startswith(header)):
            continue
        parts = line.split(maxsplit=fields - 1)
        if len(parts) != fields or not all(p.lstrip("-").isdigit() for p in parts[:numeric]):
            raise DataError(f"{TITLES[key]}: line {number} of '{path}' is {line.strip()[:80]!r}, expected {form!r}; "
                            f"restore the official file: {HOW_TO_GET[key]}")
        rows.append(parts)
    return rows


def _by_class_id(key: str, paths: list[str], class_ids: list[int]) -> tuple[_Split, _Split]:
    first = FIRST_TEST_CLASS[key]
    last = {"cub": 200, "cars": 196}[key]
    splits = []
    for name, keep, what in (("train", lambda c: c < first, f"classes 1-{first - 1}"),
                             ("test", lambda c: c >= first, f"classes {first}-{last}")):
        chosen = [k for k, c in enumerate(class_ids) if keep(c)]
        splits.append(_Split(name, what, [paths[k] for k in chosen], [class_ids[k] for k in chosen]))
    return splits[0], splits[1]


def _present(image_dir: Path, paths: list[str]) -> np.ndarray:
    """(len(paths),) bool: is each relative path a file? One directory listing per folder."""
    listings: dict[str, set[str]] = {}
    out = np.zeros(len(paths), dtype=bool)
    for k, rel in enumerate(paths):
        parent, name = os.path.split(rel)
        names = listings.get(parent)
        if names is None:
            try:
                with os.scandir(image_dir / parent) as it:
                    names = {e.name for e in it if e.is_file()}
            except OSError:
                names = set()
            listings[parent] = names
        out[k] = name in names
    return out


def _checked(key: str, split: _Split, index: str, image_dir: Path, verify_counts: bool) -> _Split:
    """``split`` after the resource-fork and count checks (see the module docstring)."""
    title, how = TITLES[key], HOW_TO_GET[key]
    forks = [p for p in split.paths if os.path.basename(p).startswith("._")]
    if forks:
        shown = ", ".join(repr(p) for p in forks[:3]) + (", ..." if len(forks) > 3 else "")
        raise DataError(
            f"{title}: {index} lists {len(forks)} macOS resource-fork file(s) as {split.name} images ({shown}); "
            f"they are not images (left by copying the data from a Mac): delete those entries or restore the "
            f"official {index} ({how})"
        )
    present = _present(image_dir, split.paths)
    listed, found = len(split.paths), int(present.sum())
    expected = EXPECTED_COUNTS[key][0 if split.name == "train" else 1]
    if verify_counts and (listed != expected or found != listed):
        causes = []
        if found != listed:
            example = split.paths[int(np.flatnonzero(~present)[0])]
            causes.append(f"{listed - found} listed images are missing on disk (e.g. '{image_dir / example}'): a "
                          "partial download or extraction")
        if listed != expected:
            causes.append(f"{index} lists {listed} images where the official one lists {expected}: an edited or "
                          "different index")
        raise DataError(
            f"{title} {split.name} split ({split.what}) in '{image_dir}': {found} images found, {expected} expected; "
            f"{'; '.join(causes)}; fix: {how}, or set data.verify_counts: false to use a deliberately different copy"
        )
    if found != listed:
        log.warning("%s %s split: %d images listed in %s are missing on disk and left out (data.verify_counts is "
                    "false)", title, split.name, listed - found, index)
        keep = np.flatnonzero(present)
        split = _Split(split.name, split.what, [split.paths[k] for k in keep], [split.class_ids[k] for k in keep])
    return split


def _build(key: str, base: Path, image_dir: Path, index: str, train: _Split, test: _Split,
           names: dict[int, str], verify_counts: bool) -> MetricDataset:
    arrays = {}
    for split in (train, test):
        split = _checked(key, split, index, image_dir, verify_counts)
        ids, labels = np.unique(np.asarray(split.class_ids, dtype=np.int64), return_inverse=True)
        if len(ids) < 2:
            raise DataError(f"{TITLES[key]} {split.name} split ({split.what}) in '{image_dir}' has {len(ids)} "
                            f"classes with images; it needs at least 2; {HOW_TO_GET[key]}")
        files = np.array([os.fsencode(p) for p in split.paths], dtype=np.bytes_)
        arrays[split.name] = (files, labels.astype(np.int64).reshape(-1), [names.get(int(c), str(int(c))) for c in ids])
    return MetricDataset(
        name=key, train_dir=str(image_dir), train_files=arrays["train"][0], train_labels=arrays["train"][1],
        test_dir=str(image_dir), test_files=arrays["test"][0], test_labels=arrays["test"][1],
        classes=arrays["train"][2], mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), location=str(base),
        test_classes=arrays["test"][2],
    )


def load_cub(root: str | None = None, download: bool = False, verify_counts: bool = True) -> MetricDataset:
    """CUB-200-2011: train = classes 1-100 (5,864 images), test = classes 101-200 (5,924)."""
    if download:
        raise _no_download("cub")
    index = "images.txt"
    base = _locate("cub", root, "CUB_200_2011", index, ("image_class_labels.txt", "classes.txt", "images"))
    paths = {int(i): p for i, p in _rows("cub", base / index, 2, "<image_id> <path>")}
    label_rows = _rows("cub", base / "image_class_labels.txt", 2, "<image_id> <class_id>", numeric=2)
    labels = {int(i): int(c) for i, c in label_rows}
    names = {int(c): n.strip() for c, n in _rows("cub", base / "classes.txt", 2, "<class_id> <name>")}
    unlabelled = sorted(set(paths) - set(labels))
    if unlabelled:
        raise DataError(f"CUB-200-2011: images {', '.join(map(str, unlabelled[:5]))} of '{base / index}' have no "
                        f"line in image_class_labels.txt; restore the official files: {HOW_TO_GET['cub']}")
    ids = sorted(paths)
    train, test = _by_class_id("cub", [paths[i].strip() for i in ids], [labels[i] for i in ids])
    return _build("cub", base, base / "images", index, train, test, names, verify_counts)


def _mat_field(record: np.ndarray, name: str) -> list:
    return [np.asarray(v).reshape(-1)[0] if np.asarray(v).size else None for v in np.atleast_1d(record[name])]


def load_cars(root: str | None = None, download: bool = False, verify_counts: bool = True) -> MetricDataset:
    """Cars-196: train = classes 1-98 (8,054 images), test = classes 99-196 (8,131)."""
    if download:
        raise _no_download("cars")
    index = "cars_annos.mat"
    base = _locate("cars", root, "cars196", index, ("car_ims",))
    try:
        from scipy.io import loadmat

        mat = loadmat(str(base / index), squeeze_me=True)
    except Exception as e:  # scipy raises many types for a truncated or foreign file
        raise DataError(f"cannot read '{base / index}' ({type(e).__name__}: {e}); {HOW_TO_GET['cars']}") from None
    ann = mat.get("annotations")
    fields = getattr(getattr(ann, "dtype", None), "names", None) or ()
    if "relative_im_path" not in fields or "class" not in fields:
        raise DataError(f"'{base / index}' has no struct array 'annotations' with fields relative_im_path and "
                        f"class; it is not the official cars_annos.mat: {HOW_TO_GET['cars']}")
    try:
        paths = [str(p).strip() for p in _mat_field(ann, "relative_im_path")]
        class_ids = [int(c) for c in _mat_field(ann, "class")]
    except (TypeError, ValueError):
        raise DataError(f"'{base / index}': annotations.class must be integers 1..196; {HOW_TO_GET['cars']}") from None
    names = {k + 1: str(n).strip() for k, n in enumerate(np.atleast_1d(mat.get("class_names", [])))}
    train, test = _by_class_id("cars", paths, class_ids)
    return _build("cars", base, base, index, train, test, names, verify_counts)


def load_sop(root: str | None = None, download: bool = False, verify_counts: bool = True) -> MetricDataset:
    """Stanford Online Products: train = Ebay_train.txt (11,318 classes, 59,551 images),
    test = Ebay_test.txt (11,316 classes, 60,502)."""
    if download:
        raise _no_download("sop")
    base = _locate("sop", root, "Stanford_Online_Products", "Ebay_train.txt", ("Ebay_test.txt",))
    form = "<image_id> <class_id> <super_class_id> <path>"
    splits, names = {}, {}
    for name, index in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        rows = _rows("sop", base / index, 4, form, header="image_id")
        paths = [r[3].strip() for r in rows]
        class_ids = [int(r[1]) for r in rows]
        for c, p in zip(class_ids, paths):
            if c not in names:  # "<super class folder>/<product id>" of the class's first image
                stem = os.path.splitext(p)[0]
                names[c] = stem.rsplit("_", 1)[0] if "_" in os.path.basename(stem) else stem
        splits[name] = _Split(name, index, paths, class_ids)
    overlap = sorted(set(splits["train"].class_ids) & set(splits["test"].class_ids))
    if overlap:
        raise DataError(f"Stanford Online Products: class ids {', '.join(map(str, overlap[:5]))} appear in both "
                        f"Ebay_train.txt and Ebay_test.txt; restore the official files: {HOW_TO_GET['sop']}")
    return _build("sop", base, base, "Ebay_train.txt/Ebay_test.txt", splits["train"], splits["test"], names,
                  verify_counts)


#: The loaders by ``data.name``.
METRIC_SOURCES = {"cub": load_cub, "cars": load_cars, "sop": load_sop}


def split_classes(labels, val_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): a validation split of whole classes carved from the training classes.

    ``val_classes`` classes of ``labels`` (n,) are drawn uniformly without replacement with
    ``np.random.default_rng(seed)``; every image of a drawn class goes to ``val_idx``, every other
    image to ``train_idx`` (both ascending int64 indices into ``labels``). Deterministic for a
    seed. Each side must keep at least 2 classes.
    """
    labels = np.asarray(labels).reshape(-1)
    classes = np.unique(labels)
    if isinstance(val_classes, bool) or not isinstance(val_classes, (int, np.integer)) or val_classes < 1:
        raise ConfigError(f"data.val_classes must be a whole number of classes >= 1, got {val_classes!r}")
    k, c = int(val_classes), len(classes)
    if k < 2 or c - k < 2:
        fix = f"set data.val_classes between 2 and {c - 2}" if c >= 4 else "the training split needs at least 4 classes"
        raise ConfigError(f"data.val_classes = {k} would leave {k} validation and {c - k} training classes out of "
                          f"{c}; each side needs at least 2: {fix}")
    val = np.random.default_rng(seed).choice(classes, size=k, replace=False)
    is_val = np.isin(labels, val)
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)
