"""Name → constructor registries (models, training recipes, penalties, attacks, datasets).

A registered object is a function or a class. Its keyword parameters, with their type annotations and defaults, are
the options a sweep spec may set; `Registry.validate` checks a spec's options against them with pydantic so that a
typo or a wrong type stops at spec time with one line naming the field.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from fractions import Fraction
from typing import Annotated, Any, Callable, Iterable

import pydantic

# Options in pixel units (ε, and the ℓ∞ step sizes `step` of the adversarial recipes and `alpha` of PGD-like attacks):
# a number or a fraction such as 8/255 (RobustBench's convention).
FRACTION_PARAMS = ("eps", "step", "alpha")


def fraction_float(value: Any) -> Any:
    """A number written as a fraction (`8/255`) or a decimal string → float; other values pass through to the
    field's own validation. A pydantic before-validator for every ε."""
    if isinstance(value, str):
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{value!r} is not a number or a fraction such as 8/255") from None
    return value


def pydantic_message(err: dict) -> str:
    """pydantic's message for one error, without the "Value error, " it puts before a validator's own message."""
    return err["msg"].removeprefix("Value error, ")


class SpecError(ValueError):
    """Bad user input. `field` names the spec field or file at fault; the CLI prints one line and exits 2."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Registry:
    def __init__(self, kind: str, reserved: Iterable[str] = ()):
        self.kind = kind
        # Parameters supplied by the framework (e.g. in_channels for models), not by the spec.
        self.reserved = frozenset(reserved)
        self._entries: dict[str, Callable[..., Any]] = {}
        self._validators: dict[str, type[pydantic.BaseModel]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            key = name or obj.__name__
            if key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._entries[key] = obj
            obj.registry_name = key  # type: ignore[attr-defined]
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str, field: str | None = None) -> Callable[..., Any]:
        try:
            return self._entries[name]
        except KeyError:
            raise SpecError(field or self.kind, f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def signature_params(self, name: str) -> dict[str, inspect.Parameter]:
        obj = self.get(name)
        sig = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj, eval_str=True)
        return {
            p.name: p
            for p in sig.parameters.values()
            if p.name not in ("self",) and p.name not in self.reserved
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def _validator(self, name: str) -> type[pydantic.BaseModel]:
        if name not in self._validators:
            fields: dict[str, Any] = {}
            for p in self.signature_params(name).values():
                ann = Any if p.annotation is inspect.Parameter.empty else p.annotation
                if p.name in FRACTION_PARAMS:
                    ann = Annotated[ann, pydantic.BeforeValidator(fraction_float)]
                default = ... if p.default is inspect.Parameter.empty else p.default
                fields[p.name] = (ann, default)
            self._validators[name] = pydantic.create_model(  # type: ignore[call-overload]
                f"{self.kind}_{name}_params",
                __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True, strict=False),
                **fields,
            )
        return self._validators[name]

    def validate(self, name: str, params: dict[str, Any], field: str) -> dict[str, Any]:
        """Return `params` completed with defaults; raise SpecError naming `field.<param>` on bad input."""
        self.get(name, field)
        try:
            model = self._validator(name).model_validate(params)
        except pydantic.ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise SpecError(f"{field}.{loc}" if loc else field, pydantic_message(err)) from None
        return model.model_dump()

    def build(self, name: str, *args: Any, **params: Any) -> Any:
        return self.get(name)(*args, **params)


def import_submodules(package_name: str) -> None:
    """Import every module of a package so that their @register decorators run (one file = one entry)."""
    pkg = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
