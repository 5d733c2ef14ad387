"""A generic ODE block over torchdiffeq with function-evaluation counters.

Fixed-step solvers (euler, rk4, ...) take `step_size`; without it torchdiffeq takes ONE step over [0, T], so it is
always set explicitly (default T, i.e. one step, recorded either way).
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn
from torchdiffeq import odeint, odeint_adjoint
from torchdiffeq._impl.odeint import SOLVERS

SOLVER_NAMES = tuple(sorted(SOLVERS))
FIXED_STEP_SOLVERS = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams", "fixed_adams", "heun2", "heun3")
Solver = Literal[SOLVER_NAMES]  # type: ignore[valid-type]
# Adaptive solvers in float32 cannot honour a tolerance below its resolution (ε₃₂ ≈ 1.2e-7): a dopri5 block at
# rtol = atol = 1e-12 shrinks its step until memory runs out. Such values are refused at spec time.
FLOAT32_TOL_FLOOR = 1e-7
Tolerance = Annotated[float, Field(ge=FLOAT32_TOL_FLOOR)]
# Step budget of an adaptive solve (torchdiffeq's max_num_steps): a runaway solve fails the trial in seconds.
DEFAULT_MAX_NUM_STEPS = 1000
MaxNumSteps = Annotated[int, Field(ge=1)]


class _Counted(nn.Module):
    """Wraps the dynamics f(t, h) to count forward evaluations; backward evaluations are counted by a tensor hook."""

    def __init__(self, func: nn.Module, block: "ODEBlock"):
        super().__init__()
        self.func = func
        self._block = [block]  # list: keep the parent out of the module tree

    def forward(self, t, h):
        block = self._block[0]
        if block._solving:
            block.nfe_forward += 1
        else:  # the adjoint solve re-evaluates f during backward
            block.nfe_backward += 1
        out = self.func(t, h)
        tensors = out if isinstance(out, tuple) else (out,)
        if block._solving and not block.adjoint and torch.is_grad_enabled() and tensors[0].requires_grad:
            tensors[0].register_hook(block._count_backward)
        return out


class ODEBlock(nn.Module):
    def __init__(
        self,
        func: nn.Module,
        solver: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        step_size: float | None = None,
        T: float = 1.0,
        adjoint: bool = False,
        max_num_steps: int = DEFAULT_MAX_NUM_STEPS,
    ):
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; known: {', '.join(SOLVER_NAMES)}")
        self.dynamics = _Counted(func, self)
        self.solver, self.rtol, self.atol, self.T, self.adjoint = solver, rtol, atol, T, adjoint
        self.max_num_steps = max_num_steps
        self.step_size = (step_size if step_size is not None else T) if solver in FIXED_STEP_SOLVERS else None
        self.nfe_forward = 0
        self.nfe_backward = 0
        self._solving = False

    def _count_backward(self, grad):
        self.nfe_backward += 1
        return grad

    def extra_repr(self) -> str:
        return f"solver={self.solver}, rtol={self.rtol}, atol={self.atol}, step_size={self.step_size}, T={self.T}, adjoint={self.adjoint}"

    def forward(self, h):
        t = torch.tensor([0.0, self.T], dtype=torch.float32, device=h[0].device if isinstance(h, tuple) else h.device)
        options = ({"step_size": self.step_size} if self.step_size is not None
                   else {"max_num_steps": getattr(self, "max_num_steps", DEFAULT_MAX_NUM_STEPS)})
        self._solving = True
        try:
            if self.adjoint:
                out = odeint_adjoint(self.dynamics, h, t, rtol=self.rtol, atol=self.atol, method=self.solver,
                                     options=options, adjoint_params=tuple(self.dynamics.parameters()))
            else:
                out = odeint(self.dynamics, h, t, rtol=self.rtol, atol=self.atol, method=self.solver, options=options)
        finally:
            self._solving = False
        return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]


def batch_coupled(model: nn.Module) -> bool:
    """Whether an example's output depends on the other examples of its batch: an adaptive solver (dopri5, …) picks
    each step size from the error norm of the whole batch. Such a model's rows depend on how examples are batched."""
    return any(isinstance(m, ODEBlock) and m.solver not in FIXED_STEP_SOLVERS for m in model.modules())
