"""`stacked`: a front-end (`ae`, `dae`, `blur`) in front of any classifier, attacked end-to-end (Gu & Rigazio §3).

Spec:
    model: {name: stacked, frontend: {name: dae, hidden: 256}, classifier: {name: mlp, hidden: [100, 100]}}

Both parts are built with `build_model` on the same (in_channels, num_classes, image_size); front-ends keep the
image shape. The module has `.frontend` and `.classifier` (so a recipe can pre-train or freeze the front-end),
forward = classifier(frontend(x)), and `first_layer` = the front-end's first layer.

Validation of the nested dicts: each must name a registered model in its `name` key (a front-end for `frontend`,
a non-front-end for `classifier`), and its other keys are validated against that model's options. This is wired into
the `frontend` / `classifier` annotations, so `MODELS.validate("stacked", options, field)` already reports nested
errors with the nested field, e.g. `trials[0].model.frontend.name: unknown model 'dea'; known: ...` or
`model.classifier.hidden.0: Input should be greater than 0`; it returns the nested dicts completed with defaults.
`validate_stacked(options, field)` is the same call spelled out. Building with raw dicts (no prior validation) runs the
same checks and raises SpecError with field `model.<frontend|classifier>...`.
"""
from __future__ import annotations

from typing import Annotated, Any

import pydantic_core
import torch
from pydantic import AfterValidator
from torch import nn

from advsweep.models import MODELS, build_model, register_model
from advsweep.models.layers import find_first_layer
from advsweep.registry import SpecError


def is_frontend(name: str) -> bool:
    return bool(getattr(MODELS.get(name), "is_frontend", False))


def check_model_ref(ref: Any, role: str, field: str) -> dict[str, Any]:
    """Validate one nested model dict; `role` is "frontend" or "classifier". Returns {name, **options completed}."""
    if not isinstance(ref, dict):
        raise SpecError(field, f"must be a mapping with a 'name' key, got {type(ref).__name__}")
    if "name" not in ref:
        raise SpecError(f"{field}.name", "missing")
    name = ref["name"]
    if not isinstance(name, str) or name not in MODELS:
        raise SpecError(f"{field}.name", f"unknown model {name!r}; known: {', '.join(MODELS.names())}")
    frontends = [n for n in MODELS.names() if is_frontend(n)]
    if role == "frontend" and not is_frontend(name):
        raise SpecError(f"{field}.name", f"{name!r} is not a front-end; front-ends: {', '.join(frontends)}")
    if role == "classifier" and is_frontend(name):
        raise SpecError(f"{field}.name", f"{name!r} is a front-end, not a classifier")
    options = {k: v for k, v in ref.items() if k != "name"}
    return {"name": name, **MODELS.validate(name, options, field)}


def _pydantic_check(role: str):
    def check(ref: Any) -> dict[str, Any]:
        try:
            return check_model_ref(ref, role, role)
        except SpecError as exc:
            # Re-raise as a pydantic error located under this field, so Registry.validate prints the nested path.
            loc = tuple(exc.field.split(".")[1:])
            raise pydantic_core.ValidationError.from_exception_data(
                "stacked", [{"type": pydantic_core.PydanticCustomError("model_ref", "{msg}", {"msg": exc.message}),
                             "loc": loc, "input": ref}]
            ) from None

    return check


FrontendRef = Annotated[dict[str, Any], AfterValidator(_pydantic_check("frontend"))]
ClassifierRef = Annotated[dict[str, Any], AfterValidator(_pydantic_check("classifier"))]


def validate_stacked(options: dict[str, Any], field: str = "model") -> dict[str, Any]:
    """Validate `stacked` options (without `name`) and return them completed; SpecError names the nested field."""
    return MODELS.validate("stacked", options, field)


class Stacked(nn.Module):
    def __init__(self, frontend: nn.Module, classifier: nn.Module):
        super().__init__()
        self.frontend = frontend
        self.classifier = classifier

    @property
    def first_layer(self) -> nn.Module:
        return find_first_layer(self.frontend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.frontend(x))


@register_model("stacked")
def stacked(
    in_channels: int, num_classes: int, image_size: int, frontend: FrontendRef, classifier: ClassifierRef
) -> nn.Module:
    parts = []
    for role, ref in (("frontend", frontend), ("classifier", classifier)):
        spec = check_model_ref(ref, role, f"model.{role}")
        name = spec.pop("name")
        parts.append(build_model(name, in_channels, num_classes, image_size, **spec))
    return Stacked(*parts)
