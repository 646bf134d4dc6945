"""Linear probe on frozen features (the ``fast`` protocol).

Multinomial logistic regression on standardised features, the same model as scikit-learn's
``LogisticRegression(C=C)`` (objective ``C * Σ_i CE_i + ½ ||W||²``, bias unpenalised), solved
by full-batch L-BFGS in PyTorch so it runs on the GPU and on 10⁵-10⁶ features in seconds.

Protocol: features are standardised with statistics of the *training* features; one model is
fitted per C, in increasing C (strongest regularisation first), each warm-started from its
neighbour; every fit runs until the gradient is below ``tol`` (or ``max_iter`` iterations, which
is recorded and warned about). The C with the best *validation* accuracy is kept (ties: the
smallest such C). If that C is the smallest or largest of the grid, the grid is extended on that
side geometrically (the grid's own ratio at that edge, at least ×2; ×√10 for a one-point grid;
both sides while every C searched ties, as then no direction is preferred) until the chosen C is
interior or a bound of ``C_bounds`` is reached (``C_at_edge`` then says so).
Only then is the chosen model evaluated, once, on the test features: nothing is computed on
the test features before the selection is final.

Example:
    >>> r = linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, Cs=(0.1, 1.0, 10.0))
    >>> r["C"], r["Cs_searched"], r["C_at_edge"], r["test_acc"], r["fits"][str(r["C"])]["n_iter"]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

#: Gradient tolerance: max-abs gradient of the objective divided by C·n, on standardised
#: features (docs/evaluation.md). Measured on 20000 x 512 features: val accuracies per C within
#: ~0.1 point of fits run thousands of iterations further, and the same chosen C and test
#: accuracy; float32 fits on ill-conditioned real features stall at ~2-4e-5, so 1e-5 is not
#: reachable there, and 5e-5 doubles the run time for <= 0.1 point.
TOL = 1e-4
#: Iteration cap per C: a safety net, ~10x what the tolerance took on real features (<= 200).
MAX_ITER = 2000
#: Hard bounds of the grid extension.
C_BOUNDS = (1e-6, 1e6)
#: L-BFGS memory. Its cost (O(HISTORY · d · k) per iteration) is negligible next to the
#: (n, d) @ (d, k) products; on real features 100 halves the iterations of 20.
HISTORY = 100
_MIN_RATIO = 2.0


class LogisticFit(NamedTuple):
    """One L-BFGS fit: weights ``W (d, k)``, bias ``b (k,)``, iterations used, whether the
    gradient tolerance was met, and the final max-abs gradient."""

    W: torch.Tensor
    b: torch.Tensor
    n_iter: int
    converged: bool
    grad_norm: float


def _tensor(x, device, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


def _objective_and_grad(x: torch.Tensor, y: torch.Tensor, Wt: torch.Tensor, b: torch.Tensor, reg: float,
                        acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``mean_i CE(x_i Wᵀ + b, y_i) + reg ||W||²`` and its gradients w.r.t. ``Wt (k, d)`` and ``b``.

    The two products run in x's dtype, in the layouts that are fast for a tall x and few
    classes (``F.linear(x, Wt)`` and ``Gᵀ @ x``: on a 20000 x 512 float32 x with 10 classes
    2× and 3× faster than ``x @ W`` and ``x.T @ G``, docs/speed.md); the softmax, the mean and
    the penalty in ``acc`` (float64 off MPS), so the loss resolves the tiny decreases near the
    optimum (float32 rounds them to 0 and L-BFGS stalls). The gradient is the closed form
    ``(softmax - onehot) / n``, the same arithmetic autograd does, without its graph.
    """
    n = x.shape[0]
    logp = F.linear(x, Wt, b).to(acc).log_softmax(1)  # (n, k)
    rows = torch.arange(n, device=x.device)
    W64 = Wt.to(acc)
    loss = -logp[rows, y].mean() + reg * W64.square().sum()
    g = logp.exp_()
    g[rows, y] -= 1.0
    g = (g / n).to(x.dtype)
    gWt = g.T.contiguous() @ x + (2.0 * reg * W64).to(x.dtype)  # (k, d)
    return loss, gWt, g.sum(0)


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, C: float,
                            max_iter: int = MAX_ITER, init: tuple | None = None,
                            tol: float = TOL) -> LogisticFit:
    """Minimise ``C * Σ_i CE(x_i W + b, y_i) + ½ ||W||²`` (scikit-learn's objective) with L-BFGS.

    The objective is divided by ``C * n`` internally (same minimiser, better conditioned):
    ``mean_i CE_i + ||W||² / (2 C n)``. L-BFGS (strong Wolfe line search, ``HISTORY``) runs until
    the max-abs gradient of that objective is ``<= tol``, for at most ``max_iter`` iterations;
    it also stops if the loss stops changing at all (float precision reached).
    ``init``: ``(W, b)`` to start from (warm start); default zeros.
    """
    n, d = x.shape
    Wt = (torch.zeros(num_classes, d, device=x.device, dtype=x.dtype) if init is None
          else init[0].T.contiguous().to(x.dtype))  # optimised as (k, d): the fast layout above
    b = torch.zeros(num_classes, device=x.device, dtype=x.dtype) if init is None else init[1].clone()
    # stop on the gradient only; the loss-change test just catches a loss that no longer changes
    # at the precision of x (float32 logits: ~1e-9 noise in the float64 loss)
    opt = torch.optim.LBFGS([Wt, b], lr=1.0, max_iter=max_iter, max_eval=3 * max_iter, history_size=HISTORY,
                            tolerance_grad=tol, tolerance_change=torch.finfo(x.dtype).eps * 1e-4,
                            line_search_fn="strong_wolfe")
    reg = 0.5 / (C * n)
    acc = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64

    def closure():
        loss, Wt.grad, b.grad = _objective_and_grad(x, y, Wt, b, reg, acc)
        return loss

    with torch.no_grad():
        opt.step(closure)
        _, gW, gb = _objective_and_grad(x, y, Wt, b, reg, acc)
    grad_norm = float(torch.maximum(gW.abs().max(), gb.abs().max()))
    n_iter = int(opt.state[Wt].get("n_iter", 0))
    return LogisticFit(Wt.T.contiguous(), b.detach(), n_iter, grad_norm <= tol, grad_norm)


def _accuracy(x: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor, k: int = 1) -> float:
    logits = x @ W + b
    if k == 1:
        return float((logits.argmax(1) == y).float().mean())
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == y[:, None]).any(1).float().mean())


def _next_C(grid: list[float], side: int, bounds: tuple[float, float]) -> float | None:
    """The next C beyond the lower (side 0) or upper (side -1) edge of ``grid``: the edge times
    the grid's ratio there (at least 2; √10 for one point), rounded to 6 significant digits and
    clipped to ``bounds``; None when the edge is already at its bound."""
    if len(grid) > 1:
        ratio = max(grid[1] / grid[0] if side == 0 else grid[-1] / grid[-2], _MIN_RATIO)
    else:
        ratio = math.sqrt(10)
    if side == 0:
        return None if grid[0] <= bounds[0] else max(float(f"{grid[0] / ratio:.6g}"), bounds[0])
    return None if grid[-1] >= bounds[1] else min(float(f"{grid[-1] * ratio:.6g}"), bounds[1])


def linear_probe(
    train_x, train_y, val_x, val_y, test_x=None, test_y=None,
    Cs: Sequence[float] = (0.01, 0.1, 1.0), max_iter: int = MAX_ITER, tol: float = TOL,
    C_bounds: tuple[float, float] = C_BOUNDS, device: str | torch.device | None = None,
) -> dict:
    """Fit on train, choose C on val (extending the grid until the best C is interior), then
    evaluate the chosen model on test once.

    Args:
        train_x, val_x, test_x: (n, d) features (tensor or array); *_y: (n,) integer labels.
        Cs: initial grid of inverse regularisation strengths (scikit-learn's C).
        max_iter: L-BFGS iteration cap per C (a safety net; fits stop at ``tol``).
        tol: max-abs gradient of the (C·n)-scaled objective at which a fit has converged.
        C_bounds: the grid is never extended beyond these.
        device: where to fit (default: the device of ``train_x``).

    Returns a dict with the chosen ``C``, ``val_acc`` per C searched, ``val_acc_best``,
    ``train_acc``, ``test_acc`` and ``test_top5`` (None without test data; top-5 only with > 10
    classes), ``Cs_searched`` (increasing), ``C_at_edge`` (the best C is an edge of the searched
    grid because a bound stopped the extension), ``fits`` (per C: ``n_iter``, ``converged``,
    ``hit_max_iter``, ``grad_norm``), ``converged`` (every fit converged) and ``params``.
    """
    lo, hi = C_bounds
    if not Cs or any(not c > 0 for c in Cs):
        raise ValueError(f"Cs must be positive numbers, got {list(Cs)}")
    if not 0 < lo <= min(Cs) <= max(Cs) <= hi:
        raise ValueError(f"Cs {list(Cs)} must lie within C_bounds {C_bounds}, with 0 < bounds")
    if max_iter < 1 or not tol > 0:
        raise ValueError(f"need max_iter >= 1 and tol > 0, got max_iter={max_iter}, tol={tol}")
    device = device or (train_x.device if isinstance(train_x, torch.Tensor) else "cpu")
    tr_x, va_x = _tensor(train_x, device), _tensor(val_x, device)
    tr_y, va_y = _tensor(train_y, device, torch.int64), _tensor(val_y, device, torch.int64)
    if tr_x.ndim != 2 or tr_x.shape[0] != tr_y.shape[0] or va_x.shape[0] != va_y.shape[0]:
        raise ValueError(f"features must be (n, d) with one label each; got train {tuple(tr_x.shape)} / "
                         f"{tuple(tr_y.shape)}, val {tuple(va_x.shape)} / {tuple(va_y.shape)}")
    if va_x.shape[1] != tr_x.shape[1]:
        raise ValueError(f"train features have dim {tr_x.shape[1]} but val features {va_x.shape[1]}")
    if len(torch.unique(tr_y)) < 2:
        raise ValueError("the linear probe needs at least 2 classes in train_y")
    num_classes = int(max(tr_y.max(), va_y.max())) + 1
    mean, std = tr_x.mean(0), tr_x.std(0).clamp_min(1e-8)
    tr_x, va_x = (tr_x - mean) / std, (va_x - mean) / std

    fits: dict[float, LogisticFit] = {}
    val_acc: dict[float, float] = {}

    def fit(C: float, init: LogisticFit | None) -> None:
        f = fit_logistic_regression(tr_x, tr_y, num_classes, C, max_iter,
                                    init=None if init is None else (init.W, init.b), tol=tol)
        fits[C], val_acc[C] = f, _accuracy(va_x, va_y, f.W, f.b)

    previous = None
    for C in sorted({float(c) for c in Cs}):  # strongest regularisation first, warm starts
        fit(C, previous)
        previous = fits[C]
    while True:  # extend the grid until the chosen C is interior (or a bound stops it)
        grid = sorted(val_acc)
        C = max(grid, key=val_acc.__getitem__)  # the first maximum in increasing C
        flat = len(set(val_acc.values())) == 1  # no direction to prefer: look both ways
        new = []
        if C == grid[0] and (c := _next_C(grid, 0, C_bounds)) is not None:
            new.append((c, fits[grid[0]]))
        if (C == grid[-1] or flat) and (c := _next_C(grid, -1, C_bounds)) is not None:
            new.append((c, fits[grid[-1]]))
        if not new:
            break
        for c, init in new:
            fit(c, init)
    at_edge = C in (grid[0], grid[-1])
    W, b = fits[C].W, fits[C].b
    records = {str(c): {"n_iter": f.n_iter, "converged": f.converged, "hit_max_iter": f.n_iter >= max_iter,
                        "grad_norm": f.grad_norm} for c, f in sorted(fits.items())}
    failed = [c for c in grid if not fits[c].converged]
    if failed:
        warnings.warn(f"linear probe: L-BFGS did not reach tol={tol} for C in {failed} (max_iter={max_iter}, "
                      "or float precision); raise max_iter or tol", RuntimeWarning, stacklevel=2)
    if at_edge:
        warnings.warn(f"linear probe: the chosen C={C} is at a bound of C_bounds={C_bounds}, so the searched "
                      f"grid {grid} does not bracket it", RuntimeWarning, stacklevel=2)
    out = {
        "C": C,
        "val_acc": {str(c): val_acc[c] for c in grid},
        "val_acc_best": val_acc[C],
        "train_acc": _accuracy(tr_x, tr_y, W, b),
        "test_acc": None,
        "test_top5": None,
        "Cs_searched": grid,
        "C_at_edge": at_edge,
        "converged": not failed,
        "fits": records,
        "params": {"Cs": sorted(float(c) for c in Cs), "max_iter": max_iter, "tol": tol,
                   "C_bounds": [float(lo), float(hi)], "solver": "lbfgs", "standardise": True,
                   "n_train": int(tr_x.shape[0]), "n_val": int(va_x.shape[0])},
    }
    if test_x is not None:
        # the selection above is final; the test split is looked at once, here
        te_x = (_tensor(test_x, device) - mean) / std
        te_y = _tensor(test_y, device, torch.int64)
        out["test_acc"] = _accuracy(te_x, te_y, W, b)
        if num_classes > 10:
            out["test_top5"] = _accuracy(te_x, te_y, W, b, k=5)
        out["params"]["n_test"] = int(te_x.shape[0])
    return out
