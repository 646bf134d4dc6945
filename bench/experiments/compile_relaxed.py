"""Experiment: the relaxed loss's elementwise part compiled with ``torch.compile`` (inductor)
against the hand-written eager loss and one n×n×d matmul, n = d = 512, 1 thread (docs/speed.md).

    python -m bench.experiments.compile_relaxed

The Gram matrices and the backward matmul stay eager; only the O(n²) elementwise passes are
compiled. Prints the compile time, the loss / gradient agreement and the ratios to a matmul.
"""

from __future__ import annotations

import statistics
import time

import torch

from ssl_transfer.losses import RelaxedContrastiveLoss
from ssl_transfer.losses.common import EPS_SQ
from ssl_transfer.losses.relaxed_fused import relaxed_labels_fused, sym_addmm_


def elementwise(sq: torch.Tensor, w: torch.Tensor, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and n (P + Pᵀ) from squared unit-scale distances (formula of relaxed_fused.DenseRelaxedContrastive)."""
    n = sq.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=sq.device)
    clamped = sq < EPS_SQ
    d = torch.where(eye, 0.0, sq.clamp_min(EPS_SQ).sqrt())
    m = d.mean(dim=1, keepdim=True)
    dt = d / m
    h = (delta - dt).clamp_min(0.0)
    push = torch.where(eye, 0.0, (1 - w) * h)
    a = torch.where(eye, 0.0, w * dt - push)
    row = (a * dt).sum(dim=1, keepdim=True)
    loss = (row.sum() + delta * push.sum()) / n
    p = torch.where(eye | clamped, 0.0, (a - row / n) / (dt * m * m))
    return loss, p + p.T


compiled = torch.compile(elementwise, dynamic=False)


def compiled_loss(s: torch.Tensor, t: torch.Tensor, sigma: float = 3.0, delta: float = 1.0):
    n = s.shape[0]
    w = relaxed_labels_fused(t, sigma)
    sq_norms = (s * s).sum(1)
    inv = 1.0 / float(sq_norms.mean())
    r = sq_norms * inv
    sq = sym_addmm_(r[:, None] + r[None, :], s, -2.0 * inv)
    sq.fill_diagonal_(1.0)
    loss, q = compiled(sq, w, delta)
    c = 2.0 * inv / n
    return loss, torch.addmm(s * (q.sum(1, keepdim=True) * c), q, s, alpha=-c)


def timings(f, reps: int = 20) -> list[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        f()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    torch.set_num_threads(1)
    n = d = 512
    torch.manual_seed(0)
    s, t = torch.randn(n, d), torch.randn(n, d)
    ref = RelaxedContrastiveLoss(sigma=3.0, delta=1.0)
    x = s.clone().requires_grad_(True)
    value = ref(x, t)
    value.backward()
    start = time.perf_counter()
    loss, grad = compiled_loss(s, t)
    print(f"compile + first call: {time.perf_counter() - start:.1f} s")
    print(f"loss eager {value.item():.5f} compiled {loss.item():.5f}; gradient max |diff| "
          f"{(x.grad - grad).abs().max().item():.2e} of max |grad| {x.grad.abs().max().item():.2e}")
    a, b = torch.randn(n, d), torch.randn(d, n)

    def eager():
        y = s.clone().requires_grad_(True)
        ref(y, t).backward()

    calls = {"matmul": lambda: a @ b, "eager loss fwd+bwd": eager, "compiled loss fwd+bwd": lambda: compiled_loss(s, t)}
    res: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(5):  # interleaved rounds: load changes hit every call alike
        for k, f in calls.items():
            res[k] += timings(f)
    mm_med, mm_min = statistics.median(res["matmul"]), min(res["matmul"])
    for k, v in res.items():
        print(f"{k}: median {1e3 * statistics.median(v):.2f} ms ({statistics.median(v) / mm_med:.2f}x matmul), "
              f"min {1e3 * min(v):.2f} ms ({min(v) / mm_min:.2f}x)")


if __name__ == "__main__":
    main()
