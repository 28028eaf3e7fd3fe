"""NumPy as a simulated device with a memory budget: the `xp` a lease's workload gets without a GPU.

`AccountedNumpy` is NumPy with its array-creating functions counted against a `MemoryBudget`, so the
budget's rules (refusals that name the budget and the use, release when arrays die) run in CI.

What it counts: arrays that own new memory and come out of empty, zeros, ones, full, their `*_like`
forms, array, asarray, ascontiguousarray, arange, linspace, eye, identity, copy, concatenate and stack,
at their `nbytes`. Where the size follows from the arguments (the shape-taking functions, `*_like`, eye,
identity, copy, array of an ndarray, concatenate/stack of ndarrays) the bytes are reserved *before*
NumPy allocates, so a refused allocation never takes memory; for the rest (arange, linspace, asarray,
ascontiguousarray, array of a list) the result is made first and dropped at once if refused. The bytes
are released when the array is garbage collected. Views, and calls that hand back an argument (asarray
of an array, `out=`), add nothing.

What it does not count, because NumPy has no allocator hook a library can use: arithmetic and ufunc
results and temporaries (`a + b`, `np.sqrt(a)`, `a @ b`), reductions, ndarray methods that copy
(`a.copy()`, `a.astype(...)`), `np.random`, `np.linalg` and every function not listed above. A real GPU
with CuPy counts all of those through its memory pool; here they only cost host memory.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from vgpu._private.errors import MemoryBudgetError
from vgpu._private.runtime.memory_budget import MemoryBudget

Estimate = Callable[[Sequence[Any], Mapping[str, Any]], int | None]
"""Bytes a call will allocate, from its arguments alone; None when that cannot be told beforehand."""


def _arg(args: Sequence[Any], kwargs: Mapping[str, Any], index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _shape_bytes(shape: Any, dtype: Any) -> int | None:
    dims = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
    count = math.prod(int(dim) for dim in dims)
    if count < 0:
        return None
    return count * int(np.dtype(dtype).itemsize)


def _filled(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    return _shape_bytes(_arg(args, kwargs, 0, "shape"), _arg(args, kwargs, 1, "dtype"))


def _full(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    dtype = _arg(args, kwargs, 2, "dtype")
    if dtype is None:
        dtype = np.asarray(_arg(args, kwargs, 1, "fill_value")).dtype
    return _shape_bytes(_arg(args, kwargs, 0, "shape"), dtype)


def _like(dtype_at: int, shape_at: int) -> Estimate:
    def estimate(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
        prototype = np.asarray(args[0] if args else kwargs.get("prototype", kwargs.get("a")))
        dtype = _arg(args, kwargs, dtype_at, "dtype")
        shape = _arg(args, kwargs, shape_at, "shape")
        return _shape_bytes(prototype.shape if shape is None else shape, prototype.dtype if dtype is None else dtype)

    return estimate


def _eye(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    rows = _arg(args, kwargs, 0, "N")
    cols = _arg(args, kwargs, 1, "M")
    return _shape_bytes((rows, rows if cols is None else cols), _arg(args, kwargs, 3, "dtype"))


def _identity(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    size = _arg(args, kwargs, 0, "n")
    return _shape_bytes((size, size), _arg(args, kwargs, 1, "dtype"))


def _copy_of_array(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    source = _arg(args, kwargs, 0, "object", kwargs.get("a"))
    if not isinstance(source, np.ndarray) or kwargs.get("copy", True) is not True:
        return None
    dtype = _arg(args, kwargs, 1, "dtype")
    return _shape_bytes(source.shape, source.dtype if dtype is None else dtype)


def _copy(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    source = _arg(args, kwargs, 0, "a")
    return source.nbytes if isinstance(source, np.ndarray) else None


def _join(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    arrays = _arg(args, kwargs, 0, "arrays")
    if _arg(args, kwargs, 2, "out") is not None:
        return 0
    if not isinstance(arrays, list | tuple) or not arrays or not all(isinstance(a, np.ndarray) for a in arrays):
        return None
    dtype = kwargs.get("dtype")
    if dtype is None:
        dtype = np.result_type(*{part.dtype for part in arrays})
    return _shape_bytes((sum(part.size for part in arrays),), dtype)


def _after(_args: Sequence[Any], _kwargs: Mapping[str, Any]) -> int | None:
    return None


_ESTIMATES: dict[str, Estimate] = {
    "empty": _filled,
    "zeros": _filled,
    "ones": _filled,
    "full": _full,
    "empty_like": _like(1, 4),
    "zeros_like": _like(1, 4),
    "ones_like": _like(1, 4),
    "full_like": _like(2, 5),
    "eye": _eye,
    "identity": _identity,
    "array": _copy_of_array,
    "copy": _copy,
    "concatenate": _join,
    "stack": _join,
    "asarray": _after,
    "ascontiguousarray": _after,
    "arange": _after,
    "linspace": _after,
}
"""The array-creating functions that are counted, with how each one's size is told beforehand."""


def _root(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _given_arrays(args: Sequence[Any], kwargs: Mapping[str, Any]) -> Iterator[npt.NDArray[Any]]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, np.ndarray):
            yield value
        elif isinstance(value, list | tuple):
            yield from (item for item in value if isinstance(item, np.ndarray))


def _new_memory(result: object, args: Sequence[Any], kwargs: Mapping[str, Any]) -> npt.NDArray[Any] | None:
    """The array owning the memory `result` lives in, when that memory is new (not an argument's, not foreign)."""
    if not isinstance(result, np.ndarray):
        return None
    owner = _root(result)
    if not owner.flags.owndata:
        return None
    if any(owner is _root(given) for given in _given_arrays(args, kwargs)):
        return None
    return owner


class AccountedNumpy:
    """NumPy, with array creation counted against a lease's `MemoryBudget` (see the module docstring)."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        for name, estimate in _ESTIMATES.items():
            setattr(self, name, self._counted(name, getattr(np, name), estimate))

    @property
    def budget(self) -> MemoryBudget:
        """The budget arrays are counted against."""
        return self._budget

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(np)) | set(super().__dir__()))

    def __repr__(self) -> str:
        return f"<numpy accounted against a {self._budget.limit}-byte budget>"

    def _counted(self, name: str, make: Callable[..., Any], estimate: Estimate) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            return self._allocate(make, estimate, args, kwargs)

        counted.__name__ = name
        counted.__qualname__ = f"AccountedNumpy.{name}"
        counted.__doc__ = make.__doc__
        return counted

    def _allocate(
        self, make: Callable[..., Any], estimate: Estimate, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            reserved = estimate(args, kwargs)
        except (TypeError, ValueError, OverflowError):
            reserved = None  # arguments NumPy will reject itself, with its own message
        if reserved is not None:
            self._budget.reserve(reserved)
        try:
            result = make(*args, **kwargs)
        except BaseException:
            self._budget.release(reserved or 0)
            raise
        owner = _new_memory(result, args, kwargs)
        owned = 0 if owner is None else int(owner.nbytes)
        reserved = reserved or 0
        if owned > reserved:
            try:
                self._budget.reserve(owned - reserved)
            except MemoryBudgetError:
                self._budget.release(reserved)
                del result, owner
                raise
        elif owned < reserved:
            self._budget.release(reserved - owned)
        if owner is not None and owned:
            weakref.finalize(owner, self._budget.release, owned).atexit = False
        return result
