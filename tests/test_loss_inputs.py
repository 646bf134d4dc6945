"""Every loss refuses what it cannot compute: NaN / inf inputs, non-floating dtypes, numpy
arrays, zero-width embeddings (shared checks in ssl_transfer/losses/common.py); and the loss
package's layout: shared helpers under public names in common.py, modules of readable size."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from test_losses_zoo import D_S, D_T  # the zoo's shared-contract losses and widths
from test_losses_zoo import FACTORIES as ZOO

import ssl_transfer.losses as losses_pkg
from ssl_transfer.losses import (
    KDLoss,
    RegressionLoss,
)
from ssl_transfer.losses.common import check_finite, check_pair_inputs

N = 8
FACTORIES = {**ZOO, "kd": lambda: KDLoss()}  # kd: logits, student and teacher of the same (n, C) shape
NAMES = sorted(FACTORIES)


def inputs(name, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    d_t = D_S if name == "kd" else D_T
    return torch.randn(N, D_S, generator=g).to(dtype), torch.randn(N, d_t, generator=g).to(dtype)


@pytest.mark.parametrize("name", NAMES)
def test_valid_inputs_pass(name):
    s, t = inputs(name)
    assert torch.isfinite(FACTORIES[name]()(s.requires_grad_(), t))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("which", ["student", "teacher"])
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_inputs_raise(name, which, value):
    """Before: the blocked relaxed path returned a finite 0.0 with a NaN gradient, the dense
    path NaN, the other losses NaN."""
    s, t = inputs(name)
    (s if which == "student" else t)[3, 1] = value
    with pytest.raises(ValueError, match=f"{which} holds 1 NaN or infinite"):
        FACTORIES[name]()(s.requires_grad_(), t)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
@pytest.mark.parametrize("which", ["student", "teacher"])
@pytest.mark.parametrize("name", NAMES)
def test_non_floating_dtypes_raise_type_error_naming_the_dtype(name, which, dtype):
    s, t = inputs(name)
    if which == "student":
        s = s.to(dtype)
    else:
        t = t.to(dtype)
    with pytest.raises(TypeError, match=f"{which} has dtype {dtype}"):
        FACTORIES[name]()(s, t)


@pytest.mark.parametrize("which", ["student", "teacher"])
@pytest.mark.parametrize("name", NAMES)
def test_numpy_arrays_raise_type_error_pointing_to_from_numpy(name, which):
    s, t = inputs(name)
    args = (s.numpy(), t) if which == "student" else (s, t.numpy())
    with pytest.raises(TypeError, match=rf"{which} must be a torch.Tensor, got a numpy.ndarray.*torch.from_numpy"):
        FACTORIES[name]()(*args)


@pytest.mark.parametrize("which", ["student", "teacher"])
@pytest.mark.parametrize("name", NAMES)
def test_zero_columns_raise(name, which):
    s, t = inputs(name)
    if name == "kd":  # logits: both zero-width
        s, t = s[:, :0], t[:, :0]
    elif which == "student":
        s = s[:, :0]
    else:
        t = t[:, :0]
    with pytest.raises(ValueError, match="d = 0|C >= 1"):
        FACTORIES[name]()(s, t)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_other_floating_dtypes_are_accepted(name, dtype):
    s, t = inputs(name, dtype)
    assert torch.isfinite(FACTORIES[name]()(s, t))


def test_finite_check_is_exact_when_the_sum_overflows():
    """Large finite entries whose sum overflows are accepted; the elementwise test decides."""
    big = torch.full((4, 3), 3e38)
    check_finite(big, "student")
    check_finite(big.to(torch.float16).clamp(max=6e4), "student")  # float16 sum overflows
    big[2, 2] = float("inf")
    with pytest.raises(ValueError, match=r"1 NaN or infinite value\(s\) \(first at index \(2, 2\)\)"):
        check_finite(big, "student")


def test_shape_checks_are_kept_and_empty_batches_refused():
    with pytest.raises(ValueError, match="same n"):
        check_pair_inputs(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        check_pair_inputs(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="matrices"):
        check_pair_inputs(torch.randn(4), torch.randn(4, 3))
    with pytest.raises(ValueError, match="same"):
        KDLoss()(torch.randn(3, 6), torch.randn(3, 5))
    with pytest.raises(ValueError, match="at least 1"):
        RegressionLoss(student_dim=D_S, teacher_dim=D_T)(torch.randn(0, D_S), torch.randn(0, D_T))


# ----------------------------------------------------------------------------- package layout

PKG = Path(losses_pkg.__file__).parent
LOSS_MODULES = ["darkrank", "kd", "pkt", "regression", "relaxed", "relaxed_blocked", "relaxed_fused",
                "relaxed_ms", "rkd", "common"]


@pytest.mark.parametrize("module", LOSS_MODULES)
def test_loss_modules_import_no_private_names_and_stay_readable(module):
    """Shared helpers live in common.py under public names: no loss module imports a private
    (_-prefixed) name from a sibling module; each module stays under ~400 lines."""
    source = (PKG / f"{module}.py").read_text()
    assert len(source.splitlines()) <= 400
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{module}.py imports {private} from .{node.module}"


def test_relaxed_module_holds_the_formula_and_not_the_fused_kernel():
    from ssl_transfer.losses import common, relaxed, relaxed_fused

    assert callable(relaxed.relaxed_contrastive_loss)
    assert not hasattr(relaxed, "_DenseRelaxedContrastive") and not hasattr(relaxed, "_sym_addmm_")
    assert hasattr(relaxed_fused, "DenseRelaxedContrastive") and hasattr(relaxed_fused, "sym_addmm_")
    for name in ("full_precision", "check_pair_inputs", "compute_dtype", "pairwise_distances", "EPS_SQ"):
        assert hasattr(common, name)
    assert len((PKG / "relaxed.py").read_text().splitlines()) < 200
    assert np.isfinite(relaxed.relaxed_contrastive_loss(torch.randn(4, 2), torch.randn(4, 3)).item())
