"""NumPy-backed stand-ins for a device array module.

``strict``: its arrays behave like CuPy's in the one way that matters here:
they refuse to become NumPy arrays implicitly (``numpy.asarray``,
``numpy.exp(a)``, ``float(a)`` of a non-scalar …). Numerical code that runs
on them gets every array operation from the module the backend gives it,
and moves data to the host only through ``backend.to_host`` (which calls
``.get()``). It offers no kernels, so code takes its NumPy forms.

``counting``: the same strictness, plus CuPy's kernel interfaces
(``ElementwiseKernel``, ``ReductionKernel``), whose CUDA sources it runs as
Python (:mod:`nca_np.kernels` writes every source so that it is valid
Python given the helpers of ``kernels.NUMPY_HELPERS``), ``RawKernel`` for
the kernels of ``kernels.RAW_EMULATIONS`` (run as their NumPy emulation), and a count of the
operations that would launch device work: every kernel call, module
function, array operator, copy and reduction, but not views (reshape,
transpose, basic slicing) nor allocations of uninitialised memory. Read it
with ``counting.launches`` after ``counting.reset()``; host↔device copies
are counted apart, in ``counting.transfers``.
"""

from __future__ import annotations

import collections
import operator
import types

import numpy

from nca_np import backend
from nca_np.kernels import NUMPY_HELPERS, RAW_EMULATIONS


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


def _wrap(obj, cls=None):
    cls = cls or StrictArray
    if isinstance(obj, numpy.ndarray):
        return cls(obj)
    if isinstance(obj, numpy.generic):
        return cls(numpy.asarray(obj))
    if isinstance(obj, tuple):
        return tuple(_wrap(o, cls) for o in obj)
    return obj


#: Array methods that only make views or read metadata (no device work).
VIEW_METHODS = {"reshape", "transpose", "view", "ravel", "swapaxes", "squeeze"}


def _is_basic_index(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, (int, slice, numpy.integer)) for k in keys)


class StrictArray:
    """Wraps an ndarray; every operation returns arrays of the same class."""

    __array_ufunc__ = None  # NumPy ufuncs refuse these arrays

    def __init__(self, data):
        self._data = data

    @classmethod
    def _count(cls, kind: str) -> None:
        """Hook of the counting stand-in; plain strict arrays count nothing."""

    def __array__(self, *args, **kwargs):
        raise ImplicitConversion("implicit conversion of a device array to NumPy")

    def get(self):
        self._count("transfer")
        return self._data.copy()

    def __float__(self):
        raise ImplicitConversion("float() of a device array: use backend.to_float")

    def __bool__(self):
        raise ImplicitConversion("truth value of a device array")

    def __len__(self):
        return len(self._data)

    def __iter__(self):
        return (_wrap(row, type(self)) for row in self._data)

    def __repr__(self):
        return f"{type(self).__name__}({self._data!r})"

    def __getattr__(self, name):
        if name.startswith("__"):  # no __array_interface__, no buffer protocol
            raise AttributeError(name)
        value = getattr(self._data, name)
        if callable(value):
            def method(*a, **k):
                if name not in VIEW_METHODS:
                    self._count("launch")
                return _wrap(value(*_unwrap(a), **_unwrap(k)), type(self))
            return method
        return _wrap(value, type(self))

    def __getitem__(self, key):
        if not _is_basic_index(key):
            self._count("launch")  # a gather
        return _wrap(self._data[_unwrap(key)], type(self))

    def __setitem__(self, key, value):
        if isinstance(value, numpy.ndarray) and value.ndim > 0:  # CuPy refuses host arrays here too
            raise ImplicitConversion("assigning a NumPy array into a device array: use backend.to_device")
        self._count("launch")
        self._data[_unwrap(key)] = _unwrap(value)


def _binary(op):
    def method(self, other):
        self._count("launch")
        return _wrap(op(self._data, _unwrap(other)), type(self))
    return method


def _reflected(op):
    def method(self, other):
        self._count("launch")
        return _wrap(op(_unwrap(other), self._data), type(self))
    return method


def _inplace(op):
    def method(self, other):
        self._count("launch")
        op(self._data, _unwrap(other))
        return self
    return method


def _unary(op):
    def method(self):
        self._count("launch")
        return _wrap(op(self._data), type(self))
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
StrictArray.__neg__ = _unary(operator.neg)
StrictArray.__abs__ = _unary(abs)

#: Module functions that allocate without initialising, or make views.
NO_LAUNCH_FUNCTIONS = {"empty", "empty_like", "reshape", "transpose", "broadcast_to", "expand_dims", "dtype",
                       "finfo", "result_type", "ndim", "shape"}


class _StrictModule(types.ModuleType):
    """``strict.zeros``, ``strict.matmul`` …: NumPy's functions on StrictArrays."""

    array_type = StrictArray
    hidden = ("ElementwiseKernel", "ReductionKernel", "RawKernel", "cuda", "asnumpy", "get_default_memory_pool")

    def __getattr__(self, name):
        if name.startswith("__") or name in self.hidden:
            raise AttributeError(name)
        target = getattr(numpy, name)
        if not callable(target) or isinstance(target, type):
            return target
        array_type = self.array_type

        def function(*args, **kwargs):
            if name not in NO_LAUNCH_FUNCTIONS:
                array_type._count("launch")
            return _wrap(target(*_unwrap(args), **_unwrap(kwargs)), array_type)
        function.__name__ = name
        return function

    def asarray(self, obj, dtype=None):
        if isinstance(obj, StrictArray):
            return obj if dtype is None or obj._data.dtype == dtype else obj.astype(dtype)
        self.array_type._count("transfer")
        return self.array_type(numpy.array(_unwrap(obj), dtype=dtype))


strict = _StrictModule("strict_xp")
backend.register_array_type(StrictArray, strict)


# ----------------------------------------------------------------------------
# the counting stand-in, with CuPy's kernel interfaces


class _Counts:
    """How many device launches and host↔device copies were made."""

    def __init__(self):
        self.by_kind = collections.Counter()

    def reset(self):
        self.by_kind.clear()


_counts = _Counts()


class CountingArray(StrictArray):
    """A strict array whose operations are counted (see the module docstring)."""

    @classmethod
    def _count(cls, kind: str) -> None:
        _counts.by_kind[kind] += 1


def _parameters(text: str) -> list[tuple[str, str, bool]]:
    """``"raw T x, float32 y"`` → ``[("x", "T", True), ("y", "float32", False)]``."""
    parsed = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        words = item.split()
        parsed.append((words[-1], words[-2], words[0] == "raw"))
    return parsed


def _type_of(type_name: str, arrays: dict, params) -> type:
    """The NumPy type a CUDA type name stands for (a placeholder like T takes
    the dtype of the first array argument declared with it)."""
    if type_name in ("float16", "float32", "float64", "int32", "int64", "bool"):
        return getattr(numpy, type_name if type_name != "bool" else "bool_")
    for name, declared, _ in params:
        if declared == type_name and isinstance(arrays.get(name), numpy.ndarray):
            return arrays[name].dtype.type
    raise TypeError(f"cannot tell what type {type_name} is")


def _environment(in_params, out_params, args):
    """Names of a kernel source bound to NumPy values: arrays as given (raw
    ones flattened, as CUDA indexes them), scalars cast to their declared type."""
    params = _parameters(in_params) + _parameters(out_params)
    if len(args) != len(params):
        raise TypeError(f"kernel takes {len(params)} arguments, got {len(args)}")
    values = dict(zip((name for name, _, _ in params), (_unwrap(a) for a in args)))
    env = dict(NUMPY_HELPERS)
    for name, type_name, raw in params:
        value = values[name]
        if isinstance(value, numpy.ndarray):
            env[name] = value.reshape(-1) if raw else value
        else:
            env[name] = _type_of(type_name, values, params)(value)
        if len(type_name) == 1:  # a placeholder: the source may use it as a type (T(0))
            env[type_name] = _type_of(type_name, values, params)
    return env, params, values


def _elementwise_kernel(in_params, out_params, operation, name, preamble="", **options):
    """A CuPy ``ElementwiseKernel`` run as Python statements over whole arrays."""
    n_out = len(_parameters(out_params))

    def run(*args):
        _counts.by_kind["launch"] += 1
        env, params, values = _environment(in_params, out_params, args)
        for statement in filter(str.strip, operation.split(";")):
            exec(statement.strip(), {}, env)
        for out_name, _, _ in params[-n_out:]:
            values[out_name][...] = env[out_name]
        outs = tuple(args[-n_out:])
        return outs[0] if n_out == 1 else outs
    return run


def _reduction_kernel(in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name,
                      reduce_type=None, preamble="", **options):
    """A CuPy ``ReductionKernel`` of a sum, run as a Python expression over whole arrays."""
    if reduce_expr.replace(" ", "") != "a+b":
        raise NotImplementedError("the stand-in runs sums only")
    out_name = _parameters(out_params)[0][0]

    def run(*args, axis=None, out=None, keepdims=False):
        _counts.by_kind["launch"] += 1
        env, _, _ = _environment(in_params, out_params, list(args) + [out])
        reduced = numpy.sum(eval(map_expr, {}, env), axis=axis, keepdims=keepdims)
        env.update(a=reduced)
        exec(post_map_expr, {}, env)
        target = _unwrap(out)
        target[...] = env[out_name]
        return out
    return run


def _raw_kernel(code, name, options=(), **kwargs):
    """A CuPy ``RawKernel`` of nca_np.kernels, run as its NumPy emulation
    (``kernels.RAW_EMULATIONS``: a CUDA source cannot run as Python)."""
    emulation = RAW_EMULATIONS[name]

    def run(grid, block, args, **launch):
        _counts.by_kind["launch"] += 1
        emulation(tuple(grid), tuple(block), tuple(_unwrap(a) for a in args))
    return run


class _CountingModule(_StrictModule):
    """``strict`` with CuPy's kernel interfaces, counting what it launches."""

    array_type = CountingArray
    hidden = ("cuda", "asnumpy", "get_default_memory_pool")
    ElementwiseKernel = staticmethod(_elementwise_kernel)
    ReductionKernel = staticmethod(_reduction_kernel)
    RawKernel = staticmethod(_raw_kernel)

    @property
    def launches(self) -> int:
        return _counts.by_kind["launch"]

    @property
    def transfers(self) -> int:
        return _counts.by_kind["transfer"]

    def reset(self) -> None:
        _counts.reset()


counting = _CountingModule("counting_xp")
backend.register_array_type(CountingArray, counting)
