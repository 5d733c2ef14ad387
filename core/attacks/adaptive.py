"""Adaptive attacks: craft on another model, evaluate on the deployed one.

- `transfer`: craft with a base attack on `source_model` (injected by the engine, never set by a spec: it is a
  reserved parameter of the attack registry), return x_adv for evaluation on `model`.
- `solver_surrogate`: craft on a deep copy of the deployed ODE model whose ODE blocks use other solver settings
  (a BPDA-like check for gradient masking by adaptive solvers); the deployed model is not touched.

Each has an ℓ2 twin (`transfer_l2`, `solver_surrogate_l2`) because the threat model is a class attribute; the base
attack must be an ε-bounded attack of the same threat model. `steps`/`grad_norm` are the base attack's, measured on
the model it crafted on.
"""
from __future__ import annotations

import copy
from typing import Annotated, Any

from pydantic import PositiveFloat
from torch import nn

from advsweep.attacks import ATTACKS, Attack, build_attack, register_attack
from advsweep.attacks._util import BaseOptions, base_attack_validator
from advsweep.models.ode import FIXED_STEP_SOLVERS, Solver

BaseLinf = Annotated[str, base_attack_validator("linf")]
BaseL2 = Annotated[str, base_attack_validator("l2")]


class _Wrapper(Attack):
    wrapper = True

    def _base_attack(self, model: nn.Module) -> Attack:
        return build_attack(self.base, model, self.eps, self.seed, **self.base_options)

    def _init_base(self, base: str, base_options: dict[str, Any]) -> None:
        # Validate here too: the engine may build the attack from options that never went through a spec.
        cls = ATTACKS.get(base, "base")
        if getattr(cls, "wrapper", False) or cls.norm != self.norm:
            raise ValueError(f"base attack {base!r} (threat model {cls.norm!r}) cannot be the base of a "
                             f"{self.norm!r} {type(self).__name__}")
        self.base = base
        self.base_options = ATTACKS.validate(base, dict(base_options or {}), "base_options")


@register_attack("transfer")
class Transfer(_Wrapper):
    """Transfer attack: x_adv = base(source_model, eps, seed, **base_options)(x, y); evaluated on `model`."""

    def __init__(self, model, eps, seed, source_model: nn.Module | None = None, base: BaseLinf = "pgd",
                 base_options: BaseOptions = {}):  # noqa: B006 - never mutated
        super().__init__(model, eps, seed)
        if source_model is None:
            raise ValueError("transfer needs `source_model`, which the evaluation engine injects (a spec cannot set it)")
        self.source_model = source_model
        self._init_base(base, base_options)

    def run(self, x, y):
        res = self._base_attack(self.source_model)(x, y)
        res.info = {**(res.info or {}), "base": self.base, "base_options": self.base_options,
                    "source_model": getattr(self.source_model, "registry_name", type(self.source_model).__name__)}
        return res


@register_attack("transfer_l2")
class TransferL2(Transfer):
    """Transfer attack under the ℓ2 threat model (base defaults to pgd_l2)."""

    norm = "l2"

    def __init__(self, model, eps, seed, source_model: nn.Module | None = None, base: BaseL2 = "pgd_l2",
                 base_options: BaseOptions = {}):  # noqa: B006
        super().__init__(model, eps, seed, source_model=source_model, base=base, base_options=base_options)


def ode_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules with ODE-solver settings (advsweep.models.ode.ODEBlock or anything with the same attributes)."""
    return [m for m in model.modules() if all(hasattr(m, a) for a in ("solver", "rtol", "atol", "adjoint"))
            and hasattr(m, "nfe_forward")]


def with_solver(model: nn.Module, solver: str | None = None, rtol: float | None = None, atol: float | None = None,
                step_size: float | None = None, adjoint: bool | None = None) -> nn.Module:
    """A deep copy of `model` whose ODE blocks use the given settings (None: keep the block's own). A fixed-step
    solver without an explicit step_size keeps the block's step size if it had one, else takes one step of T (as
    ODEBlock does); an adaptive solver has no step size."""
    blocks = ode_blocks(model)
    if not blocks:
        raise ValueError(f"model {getattr(model, 'registry_name', type(model).__name__)!r} has no ODE blocks; "
                         "solver settings only apply to ODE models")
    copy_ = copy.deepcopy(model)
    for block in ode_blocks(copy_):
        new_solver = solver if solver is not None else block.solver
        if new_solver in FIXED_STEP_SOLVERS:
            if step_size is not None:
                block.step_size = step_size
            elif block.solver not in FIXED_STEP_SOLVERS or block.step_size is None:
                block.step_size = block.T
        else:
            if step_size is not None:
                raise ValueError(f"step_size applies to fixed-step solvers ({', '.join(FIXED_STEP_SOLVERS)}), "
                                 f"not {new_solver!r}")
            block.step_size = None
        block.solver = new_solver
        if rtol is not None:
            block.rtol = rtol
        if atol is not None:
            block.atol = atol
        if adjoint is not None:
            block.adjoint = adjoint
    return copy_


@register_attack("solver_surrogate")
class SolverSurrogate(_Wrapper):
    """Craft with a base attack on a copy of the deployed ODE model whose ODE blocks use the surrogate solver
    settings (solver / rtol / atol / step_size / adjoint; None keeps the deployed value), evaluate on the deployed
    model. E.g. solver="rk4", step_size=0.25 against a dopri5 tol-0.1 deployment. Raises for a model without ODE
    blocks. `info["surrogate"]` records the surrogate's block settings."""

    def __init__(self, model, eps, seed, base: BaseLinf = "pgd", base_options: BaseOptions = {},  # noqa: B006
                 solver: Solver | None = None, rtol: PositiveFloat | None = None, atol: PositiveFloat | None = None,
                 step_size: PositiveFloat | None = None, adjoint: bool | None = None):
        super().__init__(model, eps, seed)
        self._init_base(base, base_options)
        self.surrogate_settings = {"solver": solver, "rtol": rtol, "atol": atol, "step_size": step_size,
                                   "adjoint": adjoint}
        if not ode_blocks(model):
            raise ValueError(f"solver_surrogate needs a model with ODE blocks; "
                             f"{getattr(model, 'registry_name', type(model).__name__)!r} has none")

    @classmethod
    def not_applicable(cls, model, options):
        if not ode_blocks(model):
            return f"{getattr(model, 'registry_name', type(model).__name__)} has no ODE blocks to change the solver of"
        return None

    def surrogate(self) -> nn.Module:
        return with_solver(self.model, **self.surrogate_settings)

    def run(self, x, y):
        surrogate = self.surrogate()
        res = self._base_attack(surrogate)(x, y)
        blocks = [{"solver": b.solver, "rtol": b.rtol, "atol": b.atol, "step_size": b.step_size,
                   "adjoint": b.adjoint} for b in ode_blocks(surrogate)]
        res.info = {**(res.info or {}), "base": self.base, "base_options": self.base_options, "surrogate": blocks}
        return res


@register_attack("solver_surrogate_l2")
class SolverSurrogateL2(SolverSurrogate):
    """solver_surrogate under the ℓ2 threat model (base defaults to pgd_l2)."""

    norm = "l2"

    def __init__(self, model, eps, seed, base: BaseL2 = "pgd_l2", base_options: BaseOptions = {},  # noqa: B006
                 solver: Solver | None = None, rtol: PositiveFloat | None = None, atol: PositiveFloat | None = None,
                 step_size: PositiveFloat | None = None, adjoint: bool | None = None):
        super().__init__(model, eps, seed, base=base, base_options=base_options, solver=solver, rtol=rtol,
                         atol=atol, step_size=step_size, adjoint=adjoint)
