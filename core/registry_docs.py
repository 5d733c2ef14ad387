"""`advsweep list`: every registered name with the options a spec may set, read from the same signatures
`Registry.validate` checks a spec against (so the listing cannot drift from what is accepted)."""
from __future__ import annotations

import inspect
import re
import types
import typing
from typing import Any


def _registry(kind: str):
    if kind == "models":
        from advsweep.models import MODELS
        return MODELS
    if kind == "attacks":
        from advsweep.attacks import ATTACKS
        return ATTACKS
    if kind == "recipes":
        from advsweep.training import RECIPES
        return RECIPES
    from advsweep.training import PENALTIES
    return PENALTIES


KINDS = ("models", "attacks", "recipes", "penalties")


def _bounds(meta: Any) -> list[str]:
    """Constraints of one Annotated metadata item (annotated_types / pydantic FieldInfo); validators say nothing."""
    out = []
    for attr, sym in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
        v = getattr(meta, attr, None)
        if v is not None and not callable(v):
            out.append(f"{sym} {v:g}" if isinstance(v, (int, float)) else f"{sym} {v}")
    lo, hi = getattr(meta, "min_length", None), getattr(meta, "max_length", None)
    if lo:
        out.append(f"≥ {lo} items")
    if hi is not None:
        out.append(f"≤ {hi} items")
    for inner in getattr(meta, "metadata", None) or []:  # pydantic Field(...) inside Annotated
        out += _bounds(inner)
    return out


def type_text(annotation: Any) -> str:
    """`int > 0`, `float ≥ 1e-07`, `list[int > 0]`, `'dopri5' | 'rk4'`, `float | None`: the annotation as a reader
    needs it, constraints included, module prefixes and validator functions left out."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return "any"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        bounds = [b for m in annotation.__metadata__ for b in _bounds(m)]
        return " ".join([type_text(args[0]), *bounds])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_text(a) for a in args)}]" if args else name
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    return re.sub(r"\b(typing|collections\.abc|builtins)\.", "", str(annotation))


def summary(obj: Any) -> str:
    """First paragraph of the entry's own docstring (not one inherited from a base class)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    first = inspect.cleandoc(doc or "").split("\n\n", 1)[0].replace("\n", " ")
    return first[:160] + ("…" if len(first) > 160 else "")


def describe(kind: str) -> list[str]:
    reg = _registry(kind)
    lines = []
    for name in reg.names():
        obj = reg.get(name)
        extra = f" [norm {obj.norm}]" if kind == "attacks" and hasattr(obj, "norm") else ""
        about = summary(obj)
        lines.append(f"{name}{extra}" + (f" — {about}" if about else ""))
        params = reg.signature_params(name)
        for p in params.values():
            default = "" if p.default is inspect.Parameter.empty else f" = {p.default!r}"
            required = " (required)" if p.default is inspect.Parameter.empty else ""
            lines.append(f"    {p.name}: {type_text(p.annotation)}{default}{required}")
        if not params:
            lines.append("    (no options)")
    return lines
