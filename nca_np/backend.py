"""The one place that decides which array module does the numerical work.

NumPy is the default; CuPy is used when asked for, either by the environment
(``NCA_NP_BACKEND=cupy``) or by ``--device gpu`` on the command line (which
calls :func:`use`). Numerical code never imports CuPy: it asks this module
for the active module (:func:`xp`) or for the module an array belongs to
(:func:`array_module`).

Randomness is always drawn on the host from an explicit, seeded
``numpy.random.Generator`` (:func:`rng`) and then moved to the device
(:func:`to_device`), so one seed gives the same numbers on CPU and GPU.
Results go back to the host through :func:`to_host` only.
"""

from __future__ import annotations

import os

import numpy

from .errors import UserError

ENV_VAR = "NCA_NP_BACKEND"
_ALIASES = {"numpy": "numpy", "cpu": "numpy", "cupy": "cupy", "gpu": "cupy", "cuda": "cupy", "auto": "auto"}

_active = None
_module_by_type: dict[type, object] = {}


class BackendError(UserError):
    """The requested array module cannot be used on this machine."""


def _load_cupy():
    """Import CuPy and prove it works with a real CUDA call.

    CuPy imports fine on a machine without a GPU and only fails at the first
    CUDA call, so a small computation is the only honest check.
    """
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install failing at import
        raise BackendError(
            "CuPy backend requested but cupy is not installed "
            "(pip install 'nca_np[gpu]' or the cupy-cudaXXx wheel for your driver)"
        ) from exc
    try:
        probe = cupy.arange(4, dtype=cupy.float32)
        float((probe @ probe).get())
    except Exception as exc:  # CUDA errors come in many types
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackendError(f"CuPy backend requested but no usable GPU was found: {first_line}") from exc
    return _register_cupy()


def use(name: str | None = None):
    """Select the array module by name and return it.

    Args:
        name: "numpy" (alias "cpu"), "cupy" (aliases "gpu", "cuda") or
            "auto" (CuPy when it works here, else NumPy); None reads
            ``NCA_NP_BACKEND`` and falls back to "numpy".

    Raises:
        BackendError: unknown name, or CuPy missing or without a usable GPU.
    """
    global _active
    raw = name if name is not None else os.environ.get(ENV_VAR, "numpy")
    key = _ALIASES.get(str(raw).strip().lower())
    if key is None:
        source = "argument" if name is not None else f"environment variable {ENV_VAR}"
        raise BackendError(f"unknown backend {raw!r} in {source}: use 'numpy', 'cupy' or 'auto'")
    if key == "auto":
        try:
            _active = _load_cupy()
        except BackendError:
            _active = numpy
    else:
        _active = numpy if key == "numpy" else _load_cupy()
    return _active


def xp():
    """The active array module (NumPy unless CuPy was asked for)."""
    if _active is None:
        use(None)
    return _active


def name() -> str:
    """'numpy' or 'cupy': the name of the active module."""
    return "numpy" if xp() is numpy else "cupy"


def register_array_type(array_type: type, module) -> None:
    """Declare that arrays of ``array_type`` belong to ``module``.

    CuPy registers itself on selection; tests use this for a stand-in module.
    """
    _module_by_type[array_type] = module


def array_module(*arrays):
    """The array module of the first non-NumPy array among ``arrays``.

    NumPy arrays, NumPy scalars and Python numbers count as NumPy, so a mix
    of device arrays and host scalars resolves to the device module.
    """
    for array in arrays:
        module = _module_by_type.get(type(array))
        if module is None and type(array).__module__.startswith("cupy"):
            module = _register_cupy()  # a CuPy array made before use("cupy")
        if module is not None:
            return module
    return numpy


def _register_cupy():
    import cupy
    _module_by_type[cupy.ndarray] = cupy
    return cupy


def to_device(host_array, module=None):
    """Copy a host (NumPy) array into ``module`` (default: the active one)."""
    module = module if module is not None else xp()
    if module is numpy:
        return numpy.asarray(host_array)
    return module.asarray(host_array)


def to_host(array):
    """Return ``array`` as a NumPy array (a copy when it lives on a device).

    Accepts NumPy arrays, NumPy or Python scalars, and any registered device
    array (which must offer ``.get()``, as CuPy arrays do).
    """
    if isinstance(array, (numpy.ndarray, numpy.generic, int, float, bool)):
        return numpy.asarray(array)
    return array.get()


def to_float(scalar) -> float:
    """A 0-d device or host array as a Python float (one explicit transfer)."""
    return float(to_host(scalar))


def rng(seed: int, stream: int | None = None) -> numpy.random.Generator:
    """A fresh host generator: the only source of randomness.

    Args:
        seed: the user's seed.
        stream: an optional stream number, for independent draws from one
            seed (e.g. a model's initial weights and its batch order).
    """
    entropy = seed if stream is None else [int(stream), int(seed)]
    return numpy.random.Generator(numpy.random.PCG64(entropy))


def stream_key(*names) -> int:
    """A stream number for :func:`rng` derived from names, not positions.

    ``rng(seed, stream_key("couplings", kind, segment))`` gives every unit of
    work a stream of its own that stays the same when other kinds,
    strategies or segments are added (a position in a list would shift).

    Args:
        names: strings or integers, joined in order.

    Returns:
        A 63-bit integer (SHA-256 of the names).
    """
    import hashlib

    text = "\x1f".join(str(name) for name in names)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def synchronize(module=None) -> None:
    """Wait for queued device work (a no-op on NumPy); used around timers."""
    module = module if module is not None else xp()
    if module is not numpy and hasattr(module, "cuda"):
        module.cuda.Device().synchronize()


def free_device_bytes(module=None) -> int | None:
    """Free memory of the current GPU in bytes; None for NumPy (host)."""
    module = module if module is not None else xp()
    if module is numpy or not hasattr(module, "cuda"):
        return None
    return int(module.cuda.Device().mem_info[0])


#: Environment variables that let float32 matrix products use TF32 tensor
#: cores (10-bit mantissas): CuPy's switch, and NVIDIA's override of every library.
TF32_VARIABLES = ("CUPY_TF32", "NVIDIA_TF32_OVERRIDE")


def tf32_settings() -> dict:
    """The TF32 switches as set in this process's environment (None: unset)."""
    return {variable: os.environ.get(variable) for variable in TF32_VARIABLES}


def free_memory_pool(module=None) -> None:
    """Give the device memory pool's unused blocks back to the device (CuPy
    keeps freed blocks for reuse); a no-op on NumPy. Called between stages."""
    module = module if module is not None else xp()
    if module is not numpy and hasattr(module, "get_default_memory_pool"):
        synchronize(module)
        module.get_default_memory_pool().free_all_blocks()


def versions(*packages: str) -> dict:
    """Versions of what computes the numbers: Python, nca_np, NumPy, the
    active array module, and any installed ``packages`` named (None when
    one is missing)."""
    import platform
    from importlib import metadata

    from . import __version__

    found = {"python": platform.python_version(), "nca_np": __version__, "numpy": numpy.__version__,
             "backend": name()}
    if name() == "cupy":
        found["cupy"] = xp().__version__
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def device_description() -> str:
    """A human-readable description of where the numbers are computed."""
    module = xp()
    if module is numpy:
        return f"CPU (NumPy {numpy.__version__}, {os.cpu_count()} logical cores)"
    props = module.cuda.runtime.getDeviceProperties(module.cuda.Device().id)
    gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return f"GPU {gpu} (CuPy {module.__version__})"
