"""exporter.values.quick_init: the quick __init__ builds exactly what the dataclass-generated one built."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pickle
import pkgutil
from dataclasses import FrozenInstanceError, dataclass, field

import pytest

import exporter
from exporter.values import GENERATED_INITS, quick_init


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(exporter.__path__, "exporter.")]


for _name in _modules():  # every module, so that every decorated class is registered
    importlib.import_module(_name)


def _frozen_slotted_dataclasses() -> list[type]:
    found = []
    for name in _modules():
        for obj in vars(importlib.import_module(name)).values():
            if (
                inspect.isclass(obj)
                and obj.__module__ == name
                and dataclasses.is_dataclass(obj)
                and obj.__dataclass_params__.frozen  # type: ignore[attr-defined]
                and "__slots__" in obj.__dict__
            ):
                found.append(obj)
    return found


def test_every_frozen_value_of_the_exporter_is_built_quick() -> None:
    """A new frozen value on the per-request path must not silently cost 250 ns a field again."""
    values = _frozen_slotted_dataclasses()
    assert len(values) > 60
    slow = [c.__qualname__ for c in values if c not in GENERATED_INITS and not hasattr(c, "__post_init__")]
    assert slow == [], "decorate them with @quick_init (exporter/values.py)"


def _same_default(a: inspect.Parameter, b: inspect.Parameter) -> bool:
    if a.default is inspect.Parameter.empty or b.default is inspect.Parameter.empty:
        return a.default is b.default
    if repr(a.default) == repr(b.default) == "<factory>":
        return True
    return a.default is b.default or a.default == b.default


@pytest.mark.parametrize("cls", sorted(GENERATED_INITS, key=lambda c: f"{c.__module__}.{c.__qualname__}"), ids=str)
def test_the_quick_init_takes_and_stores_what_the_generated_one_did(cls: type) -> None:
    quick, generated = inspect.signature(cls.__init__), inspect.signature(GENERATED_INITS[cls])
    assert [(p.name, p.kind) for p in quick.parameters.values()] == [
        (p.name, p.kind) for p in generated.parameters.values()
    ]
    for a, b in zip(quick.parameters.values(), generated.parameters.values(), strict=True):
        assert _same_default(a, b), (cls, a.name)
        assert a.annotation == b.annotation, (cls, a.name)
    required = [p.name for p in list(quick.parameters.values())[1:] if p.default is inspect.Parameter.empty]
    for everything in (False, True):  # the required fields only (defaults, factories), then every field
        names = [f.name for f in dataclasses.fields(cls)] if everything else required
        args = {name: object() for name in names}
        ours, theirs = object.__new__(cls), object.__new__(cls)
        cls.__init__(ours, **args)
        GENERATED_INITS[cls](theirs, **args)
        for f in dataclasses.fields(cls):
            mine, other = getattr(ours, f.name), getattr(theirs, f.name)
            assert mine is other or (f.name not in args and mine == other), (cls, f.name)
            if f.default_factory is not dataclasses.MISSING and f.name not in args:
                assert mine is not other, "a default factory is called for every instance"


@quick_init
@dataclass(frozen=True, slots=True)
class _Value:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)
    d: tuple[str, ...] = ()


@quick_init
@dataclass(frozen=True, slots=True)
class _Empty:
    pass


@quick_init
@dataclass(frozen=True, slots=True)
class _Derived(_Value):
    e: int = 5


def test_an_inherited_field_is_stored_through_its_base_class_slot() -> None:
    d = _Derived(1, e=7)
    assert (d.a, d.b, d.c, d.e) == (1, "b", [], 7)
    assert d == _Derived(1, "b", [], (), 7)
    with pytest.raises(FrozenInstanceError):
        d.a = 2  # type: ignore[misc]


def test_built_positionally_by_keyword_and_with_defaults() -> None:
    assert _Value(1) == _Value(a=1) == _Value(1, "b", [], ())
    v = _Value(2, c=[3])
    assert (v.a, v.b, v.c, v.d) == (2, "b", [3], ())
    assert _Value(1).c is not _Value(1).c
    assert _Empty() == _Empty()


def test_still_frozen_and_a_dataclass() -> None:
    v = _Value(1)
    with pytest.raises(FrozenInstanceError):
        v.a = 2  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del v.b  # type: ignore[misc]
    assert dataclasses.replace(v, b="x") == _Value(1, "x")
    assert pickle.loads(pickle.dumps(v)) == v
    assert hash(_Empty()) == hash(_Empty())
    assert repr(v) == "_Value(a=1, b='b', c=[], d=())"


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "missing 1 required positional argument: 'a'"),
        ((1,), {"e": 2}, "unexpected keyword argument 'e'"),
        ((1, "b", [], (), 5), {}, "takes from 2 to 5 positional arguments but 6 were given"),
        ((1,), {"a": 1}, "got multiple values for argument 'a'"),
    ],
)
def test_wrong_arguments_fail_as_with_the_generated_init(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        _Value(*args, **kwargs)


def test_only_frozen_slotted_dataclasses_without_post_init() -> None:
    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (Mutable, NoSlots, PostInit, int):
        with pytest.raises(TypeError, match="quick_init"):
            quick_init(cls)
