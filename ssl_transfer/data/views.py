"""Augmented views, built from lightly's SimCLR view transform, per dataset and SSL method.

A view is lightly's ``SimCLRViewTransform`` (random resized crop, horizontal flip, colour
jitter, random grayscale, Gaussian blur, normalisation). Its parameters start from lightly's
defaults for the method and are then adapted to the dataset's image size:

========================  =========================================================================
method ``simclr``         lightly ``SimCLRTransform``: jitter 0.8/0.8/0.8/0.2, min_scale 0.08,
                          grayscale 0.2, blur 0.5
method ``mocov2``         lightly ``MoCoV2Transform``: jitter 0.4/0.4/0.4/0.1, min_scale 0.2,
                          grayscale 0.2, blur 0.5
fashion_mnist, digits     min_scale 0.25 (0.08 leaves a few pixels of 28x28), cj_strength 0.5
                          (only brightness and contrast act on one channel), no grayscale, no blur
cifar10, cifar100         no blur; SimCLR also cj_strength 0.5 (lightly's CIFAR-10 benchmark:
                          ``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)``)
stl10                     SimCLR: cj_strength 0.5 (lightly has no STL-10 benchmark; this follows its
                          Imagenette benchmark, the nearest resolution: ``SimCLRTransform(input_size,
                          cj_strength=0.5)``); MoCo v2: lightly's defaults. Input 96 (native).
imagenet, imagenet100,    lightly's defaults at 224 (its ImageNet benchmarks: ``SimCLRTransform()``,
image_folder              ``MoCoV2Transform()``)
cub, cars, sop            the metric-learning augmentation of the Proxy-Anchor / LabelRelaxation code:
                          RandomResizedCrop(input_size, scale 0.08-1) + horizontal flip; no colour
                          jitter, grayscale or blur (input 224)
========================  =========================================================================

Keys given explicitly (the ``data.*`` augmentation keys of the config) override the preset.
"""

from __future__ import annotations

from typing import Any

from lightly.transforms.multi_view_transform import MultiViewTransform
from lightly.transforms.simclr_transform import SimCLRViewTransform

METHODS = ("simclr", "mocov2")

#: lightly's SimCLRTransform and MoCoV2Transform defaults (the parameters used here).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "simclr": {"cj_prob": 0.8, "cj_strength": 1.0, "cj_bright": 0.8, "cj_contrast": 0.8, "cj_sat": 0.8,
               "cj_hue": 0.2, "min_scale": 0.08, "random_gray_scale": 0.2, "gaussian_blur": 0.5,
               "hf_prob": 0.5},
    "mocov2": {"cj_prob": 0.8, "cj_strength": 1.0, "cj_bright": 0.4, "cj_contrast": 0.4, "cj_sat": 0.4,
               "cj_hue": 0.1, "min_scale": 0.2, "random_gray_scale": 0.2, "gaussian_blur": 0.5,
               "hf_prob": 0.5},
}

#: Metric learning (Proxy-Anchor and LabelRelaxation code): RandomResizedCrop + flip only.
_METRIC = {"min_scale": 0.08, "cj_prob": 0.0, "random_gray_scale": 0.0, "gaussian_blur": 0.0}
_GRAY = {"min_scale": 0.25, "cj_strength": 0.5, "random_gray_scale": 0.0, "gaussian_blur": 0.0}
#: Per (dataset, method) changes to METHOD_DEFAULTS.
DATASET_ADJUSTMENTS: dict[str, dict[str, dict[str, Any]]] = {
    "fashion_mnist": {"simclr": _GRAY, "mocov2": _GRAY},
    "digits": {"simclr": _GRAY, "mocov2": _GRAY},
    "cifar10": {"simclr": {"cj_strength": 0.5, "gaussian_blur": 0.0}, "mocov2": {"gaussian_blur": 0.0}},
    "cifar100": {"simclr": {"cj_strength": 0.5, "gaussian_blur": 0.0}, "mocov2": {"gaussian_blur": 0.0}},
    "stl10": {"simclr": {"cj_strength": 0.5}, "mocov2": {}},
    "imagenet": {"simclr": {}, "mocov2": {}},
    "imagenet100": {"simclr": {}, "mocov2": {}},
    "image_folder": {"simclr": {}, "mocov2": {}},
    "cub": {"simclr": _METRIC, "mocov2": _METRIC},
    "cars": {"simclr": _METRIC, "mocov2": _METRIC},
    "sop": {"simclr": _METRIC, "mocov2": _METRIC},
}

#: The keys a config may override (``data.<key>``; None keeps the preset).
OVERRIDABLE = ("min_scale", "cj_prob", "cj_strength", "hf_prob", "random_gray_scale", "gaussian_blur")


def view_params(dataset: str, method: str = "simclr", **overrides: float | None) -> dict[str, Any]:
    """The SimCLRViewTransform keyword arguments (no size, no normalisation) for a dataset and method.

    ``overrides`` (keys of OVERRIDABLE) replace the preset unless None.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if dataset not in DATASET_ADJUSTMENTS:
        raise ValueError(f"no view preset for dataset {dataset!r}; known: {', '.join(DATASET_ADJUSTMENTS)}")
    unknown = set(overrides) - set(OVERRIDABLE)
    if unknown:
        raise TypeError(f"unknown view parameters {sorted(unknown)}; use {OVERRIDABLE}")
    params = {**METHOD_DEFAULTS[method], **DATASET_ADJUSTMENTS[dataset][method]}
    params.update({k: v for k, v in overrides.items() if v is not None})
    return params


def multi_view_transform(
    views: int,
    input_size: int,
    mean: list[float],
    std: list[float],
    min_scale: float | None = None,
    cj_prob: float | None = None,
    cj_strength: float | None = None,
    hf_prob: float | None = None,
    random_gray_scale: float | None = None,
    gaussian_blur: float | None = None,
    method: str = "simclr",
    dataset: str = "fashion_mnist",
) -> MultiViewTransform:
    """``views`` independent views of one image, as a list of (C, input_size, input_size) tensors.

    Parameters left None take the preset of ``dataset`` and ``method`` (see the module docstring);
    the defaults give the grayscale 28x28 SimCLR views used for Fashion-MNIST.
    """
    params = view_params(dataset, method, min_scale=min_scale, cj_prob=cj_prob, cj_strength=cj_strength,
                         hf_prob=hf_prob, random_gray_scale=random_gray_scale, gaussian_blur=gaussian_blur)
    view = SimCLRViewTransform(input_size=input_size, normalize={"mean": list(mean), "std": list(std)}, **params)
    return MultiViewTransform(transforms=[view] * views)
