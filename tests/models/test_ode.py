"""models/graphs/ode.py: the lean dopri5 takes torchdiffeq's steps and gives its values and
gradients (the gradient through the first step size included), with and without the original's
in-place ReLU on the solver's state.

Its sums run in another order, so an error estimate that is a difference of nearly equal sums
can come out a little different, and a later step size with it: the values then differ within
the solver's tolerance (rtol = atol = 1e-3), which is the bound asserted on a toy problem; on the
model's own inputs the steps are the same and the logits within 1e-5."""

import pytest
import torch
from torchdiffeq import odeint

from genutil import api
from models.graphs import fastpath
from models.graphs.ode import dopri5


def _solve(solver: str, func, y0: torch.Tensor, tol: float = 1e-3) -> torch.Tensor:
    if solver == "ours":
        return dopri5(func, y0, tol, tol)
    return odeint(func, y0, torch.tensor([0.0, 1.0]), rtol=tol, atol=tol, method="dopri5")[1]


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("seed", [5, 6, 7])
def test_same_steps_values_and_gradients_as_torchdiffeq(inplace, seed):
    torch.manual_seed(seed)
    a = torch.randn(6, 6)
    results = []
    for solver in ("ours", "torchdiffeq"):
        weight = a.clone().requires_grad_(True)
        calls = []

        def func(t, y, weight=weight, calls=calls):
            calls.append(float(t))
            h = torch.relu_(y) if inplace else torch.relu(y)
            return torch.tanh(h @ weight)

        torch.manual_seed(seed)
        y = torch.randn(3, 6).requires_grad_(True)
        out = _solve(solver, func, y * 1.0)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), weight.grad, y.grad, calls))
    (out, gw, gy, calls), (ref, rw, ry, ref_calls) = results
    assert len(calls) == len(ref_calls)  # the same accepted and rejected steps
    assert max(abs(a - b) for a, b in zip(calls, ref_calls)) < 1e-3
    assert bool(((out - ref).abs() <= 1e-3 * (1 + ref.abs())).all())
    assert (gw - rw).abs().max().item() <= 1e-2 * rw.abs().max().item()
    assert (gy - ry).abs().max().item() <= 1e-2 * ry.abs().max().item()


def test_the_continuous_model_takes_the_same_number_of_evaluations():
    torch.manual_seed(0)
    model = api.build_model("apps/small_scale/continuous_time_dnw.yml").eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        fast = model(x)
        nfe = model.nfe
        with fastpath.use(enabled=False):  # torchdiffeq's odeint and the plain ops
            reference = model(x)
            assert model.nfe == nfe
    assert (fast - reference).abs().max().item() <= 1e-5
