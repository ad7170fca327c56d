"""A NumPy-backed stand-in for a device array module.

Its arrays behave like CuPy's in the one way that matters here: they refuse
to become NumPy arrays implicitly (``numpy.asarray``, ``numpy.exp(a)``,
``float(a)`` of a non-scalar …). Numerical code that runs on them gets
every array operation from the module the backend gives it, and moves data
to the host only through ``backend.to_host`` (which calls ``.get()``).
"""

from __future__ import annotations

import operator
import types

import numpy

from nca_np import backend


class ImplicitConversion(TypeError):
    pass


def _unwrap(obj):
    if isinstance(obj, StrictArray):
        return obj._data
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _wrap(obj):
    if isinstance(obj, numpy.ndarray):
        return StrictArray(obj)
    if isinstance(obj, numpy.generic):
        return StrictArray(numpy.asarray(obj))
    if isinstance(obj, tuple):
        return tuple(_wrap(o) for o in obj)
    return obj


class StrictArray:
    """Wraps an ndarray; every operation returns StrictArrays."""

    __array_ufunc__ = None  # NumPy ufuncs refuse these arrays

    def __init__(self, data):
        self._data = data

    def __array__(self, *args, **kwargs):
        raise ImplicitConversion("implicit conversion of a device array to NumPy")

    def get(self):
        return self._data.copy()

    def __float__(self):
        raise ImplicitConversion("float() of a device array: use backend.to_float")

    def __bool__(self):
        raise ImplicitConversion("truth value of a device array")

    def __len__(self):
        return len(self._data)

    def __iter__(self):
        return (_wrap(row) for row in self._data)

    def __repr__(self):
        return f"StrictArray({self._data!r})"

    def __getattr__(self, name):
        if name.startswith("__"):  # no __array_interface__, no buffer protocol
            raise AttributeError(name)
        value = getattr(self._data, name)
        if callable(value):
            return lambda *a, **k: _wrap(value(*_unwrap(a), **_unwrap(k)))
        return _wrap(value)

    def __getitem__(self, key):
        return _wrap(self._data[_unwrap(key)])

    def __setitem__(self, key, value):
        if isinstance(value, numpy.ndarray) and value.ndim > 0:  # CuPy refuses host arrays here too
            raise ImplicitConversion("assigning a NumPy array into a device array: use backend.to_device")
        self._data[_unwrap(key)] = _unwrap(value)


def _binary(op):
    return lambda self, other: _wrap(op(self._data, _unwrap(other)))


def _reflected(op):
    return lambda self, other: _wrap(op(_unwrap(other), self._data))


def _inplace(op):
    def method(self, other):
        op(self._data, _unwrap(other))
        return self
    return method


for _name, _op in [("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("truediv", operator.truediv), ("matmul", operator.matmul), ("pow", operator.pow),
                   ("lt", operator.lt), ("le", operator.le), ("gt", operator.gt), ("ge", operator.ge),
                   ("eq", operator.eq), ("ne", operator.ne), ("and", operator.and_)]:
    setattr(StrictArray, f"__{_name}__", _binary(_op))
for _name, _op in [("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("truediv", operator.truediv), ("matmul", operator.matmul)]:
    setattr(StrictArray, f"__r{_name}__", _reflected(_op))
for _name, _op in [("add", operator.iadd), ("sub", operator.isub), ("mul", operator.imul),
                   ("truediv", operator.itruediv)]:
    setattr(StrictArray, f"__i{_name}__", _inplace(_op))
StrictArray.__neg__ = lambda self: _wrap(-self._data)
StrictArray.__abs__ = lambda self: _wrap(abs(self._data))


def _module_function(name):
    target = getattr(numpy, name)
    if not callable(target):
        return target

    def function(*args, **kwargs):
        return _wrap(target(*_unwrap(args), **_unwrap(kwargs)))
    function.__name__ = name
    return function


class _StrictModule(types.ModuleType):
    """``strict.zeros``, ``strict.matmul`` …: NumPy's functions on StrictArrays."""

    def __getattr__(self, name):
        if name.startswith("__") or name in ("ElementwiseKernel", "cuda", "asnumpy"):
            raise AttributeError(name)
        return _module_function(name)

    def asarray(self, obj, dtype=None):
        return StrictArray(numpy.array(_unwrap(obj), dtype=dtype))


strict = _StrictModule("strict_xp")
backend.register_array_type(StrictArray, strict)
