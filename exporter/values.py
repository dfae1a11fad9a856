"""Frozen slotted dataclasses that are cheap to build: `quick_init`.

The values on the per-request path (request and response meta, the counting call and decision, credits, the
UsageEvent, metric observations, event-stream events, telemetry facts…) are frozen slotted dataclasses
(design.md). A frozen dataclass's generated `__init__` must get past its own `__setattr__`, which refuses every
assignment: it stores each field with `object.__setattr__(self, name, value)`, about 250 ns a field on CPython
3.12 — some 200 fields per request, a tenth of the addon's CPU (docs/performance.md). The slot's own
descriptor stores the same value for about 60 ns. `quick_init` gives such a class an `__init__` that does
exactly that, with the generated one's signature, defaults and default factories; the class stays a frozen
dataclass in every other respect (assignment raises `FrozenInstanceError`, `dataclasses.replace`, `fields`,
equality, hashing, pickling). The generated code is compiled once per class, as `dataclasses` compiles its own.
"""

from __future__ import annotations

import dataclasses
import keyword
from collections.abc import Callable
from typing import Any

# class -> the __init__ dataclasses generated for it (tests compare their signatures).
GENERATED_INITS: dict[type, Callable[..., None]] = {}


class _Factory:
    """The default of a parameter whose field has a default factory (called when the argument is left out)."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


def quick_init[T](cls: type[T]) -> type[T]:
    """Replaces the `__init__` of a frozen slotted dataclass with one that stores through the slot descriptors."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"quick_init needs a frozen slotted dataclass, not {cls.__qualname__}")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"quick_init: {cls.__qualname__} has a __post_init__, which the quick __init__ would skip")
    namespace: dict[str, Any] = {"_FACTORY": _FACTORY}
    args: list[str] = []
    body: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init or f.kw_only:
            raise TypeError(f"quick_init: field {f.name} of {cls.__qualname__} is not a plain init field")
        if not f.name.isidentifier() or keyword.iskeyword(f.name):  # the source below is made of these names only
            raise TypeError(f"quick_init: field name {f.name!r} of {cls.__qualname__} is not an identifier")
        # The slot's member descriptor, in the class that declared the field (a base class for inherited ones).
        slot = next(c.__dict__[f.name] for c in cls.__mro__ if f.name in c.__dict__)
        namespace[f"_set_{f.name}"] = slot.__set__
        value = f.name
        if f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            args.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            args.append(f"{f.name}=_FACTORY")
            value = f"_factory_{f.name}() if {f.name} is _FACTORY else {f.name}"
        else:
            args.append(f.name)
        body.append(f"    _set_{f.name}(self, {value})")
    # Compiled once per class at import, from the class's own field names (checked above) and names bound in
    # `namespace`: nothing of the traffic is ever part of it. dataclasses builds its own __init__ the same way.
    source = f"def __init__(self, {', '.join(args)}):\n" + ("\n".join(body) or "    pass") + "\n"
    exec(compile(source, f"<quick_init {cls.__module__}.{cls.__qualname__}>", "exec"), namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = dict(cls.__init__.__annotations__)  # for inspect.signature and get_type_hints
    GENERATED_INITS[cls] = cls.__init__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
