"""Augmented views, built from lightly's SimCLR view transform.

For 28x28 grayscale images the defaults differ from ImageNet's: a larger minimum crop
(``min_scale`` 0.25 rather than 0.08, which leaves only a few pixels), colour jitter at half
strength (only brightness and contrast act on one channel), no random grayscale and no blur.
"""

from __future__ import annotations

from lightly.transforms.multi_view_transform import MultiViewTransform
from lightly.transforms.simclr_transform import SimCLRViewTransform


def multi_view_transform(
    views: int,
    input_size: int,
    mean: list[float],
    std: list[float],
    min_scale: float = 0.25,
    cj_prob: float = 0.8,
    cj_strength: float = 0.5,
    hf_prob: float = 0.5,
    random_gray_scale: float = 0.0,
    gaussian_blur: float = 0.0,
) -> MultiViewTransform:
    """``views`` independent SimCLR views of one image, as a list of (C, H, W) tensors."""
    view = SimCLRViewTransform(
        input_size=input_size,
        cj_prob=cj_prob,
        cj_strength=cj_strength,
        min_scale=min_scale,
        random_gray_scale=random_gray_scale,
        gaussian_blur=gaussian_blur,
        hf_prob=hf_prob,
        normalize={"mean": list(mean), "std": list(std)},
    )
    return MultiViewTransform(transforms=[view] * views)
