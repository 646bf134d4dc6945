"""ImageNet, ImageNet-100 and generic image folders (file-backed, images read lazily).

On disk (torchvision ``ImageFolder`` layout)::

    <data.root>/train/<class>/*.JPEG        (ImageNet: <class> is the wnid, e.g. n01440764)
    <data.root>/val/<class>/*.JPEG          (image_folder: test/<class>/ is used when present)

Class labels follow the sorted folder names (as ``ImageFolder``). ``data.class_list`` (a text
file, one folder name per line) keeps only the listed classes; ``imagenet100`` is ImageNet with
the 100-class list of the CMC paper (Tian et al. 2019), shipped as ``imagenet100.txt`` next to
this file and identical to https://github.com/HobbitLong/CMC/blob/master/imagenet100.txt.
ImageNet itself must be obtained from https://image-net.org (ILSVRC2012; it cannot be
downloaded automatically); its ``val`` images must be sorted into wnid folders.

Normalisation uses the ImageNet mean and std (computing statistics would read every file).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import IMAGENET_MEAN, IMAGENET_STD, FileDataset, data_roots

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET100_LIST = Path(__file__).with_name("imagenet100.txt")
IMAGENET_HOW = ("download ILSVRC2012 (train and val) from https://image-net.org/download.php (it cannot be "
                "downloaded automatically) and unpack it so that train/<wnid>/*.JPEG and val/<wnid>/*.JPEG "
                "lie under data.root; sort the flat val images into wnid folders, e.g. with valprep.sh "
                "(https://github.com/soumith/imagenetloader.torch)")
FOLDER_HOW = "arrange the images as data.root/train/<class>/<image> and data.root/val/<class>/<image> (or test/)"


def read_class_list(path: str | Path) -> list[str]:
    """Class folder names from a text file, one per line (blank lines and ``#`` comments ignored)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(
            f"cannot read data.class_list '{p}' ({type(e).__name__}); point data.class_list at a text "
            "file with one class folder name (ImageNet wnid) per line"
        ) from None
    names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    names = [n for n in names if n]
    if len(names) < 2:
        raise DataError(f"data.class_list '{p}' names {len(names)} classes; list at least 2, one per line")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"data.class_list '{p}' lists {', '.join(dupes[:5])} more than once; list each class once")
    return names


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _class_dirs(split_dir: Path, how: str) -> list[str]:
    with os.scandir(split_dir) as it:
        entries = list(it)
    classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not classes:
        flat = sum(1 for e in entries if e.is_file() and _is_image(e.name))
        detail = f"it holds {flat} images but no class folders" if flat else "it holds no class folders"
        raise DataError(f"'{split_dir}' must hold one folder per class ({detail}); {how}")
    return classes


def scan_split(split_dir: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(relative paths as a bytes array, labels int64) of the images in ``split_dir/<class>/``.

    Label i is ``classes[i]``; files are sorted within each class (deterministic order). Images
    in sub-folders of a class folder are included (as ``ImageFolder`` does).
    """
    files: list[bytes] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        found = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames.sort()
            rel = os.path.relpath(dirpath, split_dir)
            found.extend(os.fsencode(os.path.join(rel, f)) for f in sorted(filenames) if _is_image(f))
        if not found:
            raise DataError(
                f"class folder '{class_dir}' holds no image files ({', '.join(IMG_EXTENSIONS)}); add its "
                "images, or remove the folder (or the class from data.class_list)"
            )
        files.extend(found)
        labels.extend([label] * len(found))
    return np.array(files, dtype=np.bytes_), np.array(labels, dtype=np.int64)


def load_image_folder(name: str, root: str | None = None, download: bool = False,
                      class_list: str | None = None) -> FileDataset:
    """``imagenet``, ``imagenet100`` or ``image_folder`` as a lazily read :class:`FileDataset`."""
    imagenet = name in ("imagenet", "imagenet100")
    title = {"imagenet": "ImageNet", "imagenet100": "ImageNet-100", "image_folder": "image_folder"}[name]
    how = IMAGENET_HOW if imagenet else FOLDER_HOW
    if download:
        raise DataError(f"data.download is not available for {title}; set data.download: false and {how}")
    roots = data_roots(root)
    base = next((p for _, p in roots if (p / "train").is_dir()), None)
    if base is None:
        where = ", ".join(f"{o} = {p}" for o, p in roots) or "data.root and $SSL_TRANSFER_DATA are both unset"
        raise DataError(f"{title} not found: no train/ folder under data.root ({where}); {how}")
    test_names = ("val",) if imagenet else ("test", "val")
    test_dir = next((base / t for t in test_names if (base / t).is_dir()), None)
    if test_dir is None:
        raise DataError(f"{title} in '{base}' has train/ but no {' or '.join(t + '/' for t in test_names)}; {how}")
    train_dir = base / "train"
    found = _class_dirs(train_dir, how)
    if class_list is None and name == "imagenet100":
        class_list = str(IMAGENET100_LIST)
    if class_list is not None:
        wanted = read_class_list(class_list)
        missing = [c for c in wanted if c not in set(found)]
        if missing:
            raise DataError(
                f"{title}: {len(missing)} classes of data.class_list '{class_list}' have no folder in "
                f"'{train_dir}' ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); {how}"
            )
        classes = sorted(wanted)
        how = how + ", or fix data.class_list"
    else:
        classes = found
    if len(classes) < 2:
        raise DataError(f"{title} in '{train_dir}' has {len(classes)} class folder; evaluation needs at least 2")
    test_found = set(_class_dirs(test_dir, how))
    unknown = sorted(test_found - set(found))
    if unknown:
        raise DataError(
            f"{title}: class folders {', '.join(unknown[:5])} of '{test_dir}' have no counterpart in "
            f"'{train_dir}'; give both splits the same class folders"
        )
    absent = [c for c in classes if c not in test_found]
    if absent and (imagenet or class_list is not None):
        raise DataError(
            f"{title}: classes {', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''} have no folder in "
            f"'{test_dir}'; {how}"
        )
    train_files, train_labels = scan_split(train_dir, classes)
    test_classes = [c for c in classes if c in test_found]
    test_files, test_local = scan_split(test_dir, test_classes)
    index = {c: i for i, c in enumerate(classes)}
    test_labels = np.array([index[c] for c in test_classes], dtype=np.int64)[test_local]
    return FileDataset(
        name=name, train_dir=str(train_dir), train_files=train_files, train_labels=train_labels,
        test_dir=str(test_dir), test_files=test_files, test_labels=test_labels, classes=list(classes),
        mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), location=str(base),
    )
