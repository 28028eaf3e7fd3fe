"""The shape of a registered state value: a device array, or a dict/list/tuple tree of them.

Flattening hands the state store the distinct arrays to copy and a skeleton that holds no array, so a
suspended lease keeps no device memory alive; rebuilding puts the restored arrays back into containers of
the same types.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

from vgpu._private.errors import InvalidRequestError
from vgpu._private.runtime.array_backend import ArrayBackend

HOST_SCALARS: tuple[type, ...] = (type(None), bool, int, float, complex, str, bytes, np.generic)
"""Leaves kept as they are (immutable host values): a step counter or a learning rate beside the arrays."""


@dataclass(frozen=True)
class ArraySlot:
    """A leaf that is a device array: `index` into the ArrayTable it was flattened with."""

    index: int


@dataclass(frozen=True)
class HostScalar:
    """A leaf that is a plain host value, kept by reference."""

    value: object


@dataclass(frozen=True)
class DictNode:
    """A dict, OrderedDict or defaultdict (its `default_factory` kept) with str keys."""

    kind: type[dict[str, Any]]
    keys: tuple[str, ...]
    children: tuple[Tree, ...]
    default_factory: Callable[[], Any] | None = None


@dataclass(frozen=True)
class SequenceNode:
    """A list, tuple or namedtuple (`kind` is the class to rebuild)."""

    kind: type[Sequence[Any]]
    children: tuple[Tree, ...]


Tree: TypeAlias = ArraySlot | HostScalar | DictNode | SequenceNode


class ArrayTable:
    """The distinct arrays of one or more trees; an array that appears twice (tied weights) gets one slot."""

    def __init__(self) -> None:
        self.arrays: list[Any] = []
        self._slots: dict[int, int] = {}

    def add(self, array: Any) -> int:
        """The slot of `array`, added if it is new (the table's reference keeps its id unique)."""
        slot = self._slots.get(id(array))
        if slot is None:
            slot = len(self.arrays)
            self._slots[id(array)] = slot
            self.arrays.append(array)
        return slot

    @property
    def nbytes(self) -> int:
        """Device bytes of the distinct arrays."""
        return sum(int(array.nbytes) for array in self.arrays)


def flatten(name: str, value: object, backend: ArrayBackend, table: ArrayTable) -> Tree:
    """The skeleton of `value` with its arrays added to `table`; InvalidRequestError names a bad leaf's path."""
    flattener = _Flattener(name, backend, table)
    tree = flattener.visit(value, "")
    if not flattener.found_array:
        raise InvalidRequestError(
            f"state {name!r} holds no {backend.name} array: register a {backend.name} array or a "
            "dict/list/tuple tree with at least one"
        )
    return tree


def rebuild(tree: Tree, arrays: Sequence[Any]) -> Any:
    """The value `tree` describes, its array slots filled from `arrays`."""
    if isinstance(tree, ArraySlot):
        return arrays[tree.index]
    if isinstance(tree, HostScalar):
        return tree.value
    if isinstance(tree, DictNode):
        items = [(key, rebuild(child, arrays)) for key, child in zip(tree.keys, tree.children, strict=True)]
        return defaultdict(tree.default_factory, items) if tree.kind is defaultdict else tree.kind(items)
    children = [rebuild(child, arrays) for child in tree.children]
    if tree.kind is list or tree.kind is tuple:
        return tree.kind(children)  # type: ignore[call-arg]  # list and tuple take one iterable
    return tree.kind._make(children)  # type: ignore[attr-defined]  # only namedtuple classes get here


def array_slots(tree: Tree) -> set[int]:
    """The ArrayTable slots `tree` refers to."""
    if isinstance(tree, ArraySlot):
        return {tree.index}
    if isinstance(tree, HostScalar):
        return set()
    return set().union(*(array_slots(child) for child in tree.children))


def describe_type(value: object) -> str:
    """`value`'s type for an error message, with an article: "a torch.Tensor", "an int"."""
    cls = type(value)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    dtype = getattr(value, "dtype", None)
    if dtype is not None and hasattr(value, "shape"):
        name = f"{name} of dtype {dtype}"
    article = "an" if name[0].lower() in "aeiou" else "a"
    return f"{article} {name}"


class _Flattener:
    """One walk over a registered value, knowing the path so far for error messages."""

    def __init__(self, name: str, backend: ArrayBackend, table: ArrayTable) -> None:
        self._name = name
        self._backend = backend
        self._table = table
        self._on_path: set[int] = set()
        self.found_array = False

    def visit(self, value: object, path: str) -> Tree:
        if self._backend.is_array(value):
            self.found_array = True
            return ArraySlot(self._table.add(value))
        if isinstance(value, HOST_SCALARS):
            return HostScalar(value)
        if id(value) in self._on_path:
            raise InvalidRequestError(f"{self._where(path)} contains itself: register trees without cycles")
        self._on_path.add(id(value))
        try:
            if isinstance(value, dict) and type(value) in (dict, OrderedDict, defaultdict):
                return self._visit_dict(value, path)
            if type(value) in (list, tuple) or _is_namedtuple(value):
                assert isinstance(value, list | tuple)
                return self._visit_sequence(value, path)
        finally:
            self._on_path.discard(id(value))
        raise InvalidRequestError(
            f"{self._where(path)} is {describe_type(value)}, not a {self._backend.name} array: register "
            f"{self._backend.name} arrays or dict/list/tuple trees of them (None, bool, int, float, complex, "
            "str and bytes may sit beside them)"
        )

    def _visit_dict(self, value: dict[Any, Any], path: str) -> DictNode:
        keys: list[str] = []
        children: list[Tree] = []
        for key, child in value.items():
            if not isinstance(key, str):
                raise InvalidRequestError(
                    f"{self._where(path)} has the key {key!r} ({describe_type(key)}): state dict keys must be str"
                )
            keys.append(key)
            children.append(self.visit(child, f"{path}[{key!r}]"))
        factory = value.default_factory if isinstance(value, defaultdict) else None
        return DictNode(type(value), tuple(keys), tuple(children), factory)

    def _visit_sequence(self, value: list[Any] | tuple[Any, ...], path: str) -> SequenceNode:
        fields: Sequence[str] | None = getattr(type(value), "_fields", None) if isinstance(value, tuple) else None
        children = []
        for index, child in enumerate(value):
            step = f".{fields[index]}" if fields is not None else f"[{index}]"
            children.append(self.visit(child, path + step))
        return SequenceNode(type(value), tuple(children))

    def _where(self, path: str) -> str:
        return f"state {self._name!r}{path}"


def _is_namedtuple(value: object) -> bool:
    return isinstance(value, tuple) and hasattr(type(value), "_fields") and hasattr(type(value), "_make")
