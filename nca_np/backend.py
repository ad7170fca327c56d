"""The one place that decides which array module does the numerical work.

NumPy is the default; CuPy is used when asked for, either by the environment
(``NCA_NP_BACKEND=cupy``) or by ``--device gpu`` on the command line (which
calls :func:`use`). ``--device auto`` takes CuPy when it works and NumPy only
when no GPU is visible (:func:`gpus_visible`); a GPU that CuPy cannot use is
an error naming the cause and the fix (docs/gpu.md#choosing-the-device).
:func:`device_line` says in one line where the numbers are computed (the
first line of every command), :func:`device_record` the same as a record.
Numerical code never imports CuPy: it asks this module for the active module
(:func:`xp`) or for the module an array belongs to (:func:`array_module`).

Randomness is always drawn on the host from an explicit, seeded
``numpy.random.Generator`` (:func:`rng`) and then moved to the device
(:func:`to_device`), so one seed gives the same numbers on CPU and GPU.
Results go back to the host through :func:`to_host` only.
"""

from __future__ import annotations

import os
import sys

import numpy

from . import __version__
from .errors import UserError

ENV_VAR = "NCA_NP_BACKEND"
_ALIASES = {"numpy": "numpy", "cpu": "numpy", "cupy": "cupy", "gpu": "cupy", "cuda": "cupy", "auto": "auto"}

_active = None
_module_by_type: dict[type, object] = {}


class BackendError(UserError):
    """The requested array module cannot be used on this machine."""


#: Why the last selection computes on the CPU ("" when it was asked for).
_cpu_reason = ""

#: What to do about CuPy failing where a GPU is visible, by the kind of failure.
CUPY_FIXES = {
    "missing": "install CuPy with its CUDA libraries: pip install 'nca_np[cuda12]' (or [cuda13]; "
               "the CUDA version nvidia-smi shows)",
    "libraries": "CuPy cannot find NVRTC, the CUDA headers or cuBLAS: pip install 'cupy-cuda12x[ctk]>=14' "
                 "(or cupy-cuda13x[ctk]: the CUDA version nvidia-smi shows)",
    "driver": "the NVIDIA driver is too old for this CuPy wheel: update the driver, or install the wheel of "
              "the CUDA version nvidia-smi shows (cupy-cuda12x[ctk] or cupy-cuda13x[ctk])",
    "device": "CuPy sees no GPU although the driver does: check CUDA_VISIBLE_DEVICES and that this user "
              "may open /dev/nvidia*",
}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _cupy_failure_kind(exc: BaseException) -> str:
    """The key of :data:`CUPY_FIXES` a failure of CuPy's first computation calls for."""
    text = f"{type(exc).__name__} {exc}".lower()
    if "insufficient" in text or "driver version" in text or "unsupported ptx" in text:
        return "driver"
    if "no cuda-capable device" in text or "nodevice" in text or "invalid device" in text:
        return "device"
    return "libraries"  # NVRTC, headers, cuBLAS or another CUDA library not found or not loadable


class CupyUnusable(BackendError):
    """CuPy cannot compute here; ``kind`` says why (a key of :data:`CUPY_FIXES`)."""

    def __init__(self, message: str, kind: str, cause: str):
        super().__init__(message)
        self.kind, self.cause = kind, cause


def _load_cupy():
    """Import CuPy and prove it works: a cuBLAS product and a kernel compiled
    by NVRTC, the two things a training step needs.

    CuPy imports fine on a machine without a GPU, or without NVRTC, and only
    fails at the first CUDA call or the first kernel, so a small computation
    is the only honest check.
    """
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install failing at import
        raise CupyUnusable("CuPy backend requested but cupy is not installed "
                           f"({CUPY_FIXES['missing']})", "missing", _first_line(exc)) from exc
    try:
        probe = cupy.arange(4, dtype=cupy.float32)
        float((probe @ probe).get())
    except Exception as exc:  # CUDA errors come in many types
        kind, cause = _cupy_failure_kind(exc), _first_line(exc)
        if gpus_visible() == 0:
            raise CupyUnusable(f"CuPy backend requested but no GPU is visible on this machine ({cause})", "device",
                               cause) from exc
        raise CupyUnusable(f"CuPy backend requested but it cannot compute here ({cause}): {CUPY_FIXES[kind]}",
                           kind, cause) from exc
    try:
        plus_one = cupy.ElementwiseKernel("T x", "T y", "y = x + T(1)", "nca_np_probe")
        float(plus_one(probe).sum().get())
    except Exception as exc:
        raise CupyUnusable(f"CuPy cannot compile a kernel: {_first_line(exc)} ({CUPY_FIXES['libraries']})",
                           "libraries", _first_line(exc)) from exc
    return _register_cupy()


def gpus_visible() -> int:
    """How many NVIDIA GPUs this machine shows, asked without CuPy: the CUDA
    driver library (``cuInit``, ``cuDeviceGetCount``), and where it finds
    none (missing, failing, or hidden by CUDA_VISIBLE_DEVICES) ``nvidia-smi
    -L``; 0 when neither finds one. ``NCA_NP_GPUS_VISIBLE`` (a number)
    overrides both, as the tests do."""
    forced = os.environ.get(GPUS_VISIBLE_VAR)
    if forced is not None and forced.strip().isdigit():
        return int(forced)
    return _driver_gpu_count() or _nvidia_smi_gpu_count()


GPUS_VISIBLE_VAR = "NCA_NP_GPUS_VISIBLE"


def _driver_gpu_count() -> int | None:
    """GPUs counted by libcuda.so.1; None when the library is not there."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def _nvidia_smi_gpu_count() -> int:
    import subprocess

    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return 0
    if listing.returncode != 0:
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def _cupy_installed() -> bool:
    from importlib.util import find_spec

    try:
        return find_spec("cupy") is not None
    except ValueError:  # imported already, without a spec
        return "cupy" in sys.modules


def _auto():
    """CuPy when it works; NumPy when no GPU is visible; else a one-line error."""
    global _cpu_reason
    try:
        return _load_cupy()
    except CupyUnusable as exc:
        gpus = gpus_visible()
        if gpus == 0:
            _cpu_reason = "CuPy is installed but no GPU is visible" if _cupy_installed() else "no GPU found"
            return numpy
        raise BackendError(f"{gpus} GPU{'s' if gpus > 1 else ''} visible but CuPy cannot use "
                           f"{'them' if gpus > 1 else 'it'} ({exc.cause}): {CUPY_FIXES[exc.kind]}; "
                           "or pass --device cpu to compute on the CPU") from exc


def use(name: str | None = None):
    """Select the array module by name and return it.

    Args:
        name: "numpy" (alias "cpu"), "cupy" (aliases "gpu", "cuda") or
            "auto"; None reads ``NCA_NP_BACKEND`` and falls back to "numpy".
            "auto" takes CuPy when it works here and NumPy only when no GPU
            is visible at all (:func:`gpus_visible`): a GPU that CuPy cannot
            use is an error naming the cause and the fix, never a silent
            fall back to the CPU.

    Raises:
        BackendError: unknown name, or CuPy missing or without a usable GPU.
    """
    global _active, _cpu_reason
    raw = name if name is not None else os.environ.get(ENV_VAR, "numpy")
    key = _ALIASES.get(str(raw).strip().lower())
    if key is None:
        source = "argument" if name is not None else f"environment variable {ENV_VAR}"
        raise BackendError(f"unknown backend {raw!r} in {source}: use 'numpy', 'cupy' or 'auto'")
    _cpu_reason = ""
    if key == "numpy":
        _cpu_reason = "chosen (--device cpu)" if name is not None else \
            "the default device (--device auto or gpu computes on a GPU)"
    if key == "auto":
        _active = _auto()
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
    return f"GPU {_gpu_name(module)} (CuPy {module.__version__})"


def _gpu_name(module) -> str:
    props = module.cuda.runtime.getDeviceProperties(module.cuda.Device().id)
    return props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])


def _cuda_version(number: int) -> str:
    """CUDA's version integers (12040) as "12.4"."""
    return f"{number // 1000}.{number % 1000 // 10}"


def tf32_enabled() -> bool:
    """Whether float32 products may use TF32 tensor cores: CuPy's own rule
    (``CUPY_TF32`` > 0); ``NVIDIA_TF32_OVERRIDE=0`` forbids them everywhere."""
    if os.environ.get("NVIDIA_TF32_OVERRIDE", "").strip() == "0":
        return False
    try:
        return int(os.environ.get("CUPY_TF32", "0")) > 0
    except ValueError:
        return False


def device_line() -> str:
    """One line saying where the numbers are computed, the first line every
    command prints: ``GPU 0: NVIDIA H100 80GB HBM3, CuPy 14.0.1, CUDA 12.8``
    or ``CPU (NumPy 2.4.0): no GPU found`` (the reason the CPU computes)."""
    module = xp()
    if module is numpy:
        reason = _cpu_reason or "chosen"
        return f"CPU (NumPy {numpy.__version__}): {reason}"
    runtime = module.cuda.runtime
    return (f"GPU {module.cuda.Device().id}: {_gpu_name(module)}, CuPy {module.__version__}, "
            f"CUDA {_cuda_version(runtime.runtimeGetVersion())}")


def device_record() -> dict:
    """Where a stage computed its numbers, as JSON-able values: backend,
    device name, the line of :func:`device_line`, NumPy's, CuPy's and CUDA's
    versions (None on the CPU) and whether float32 products may use TF32."""
    module = xp()
    record = {"backend": name(), "device": "CPU", "line": device_line(), "numpy": numpy.__version__,
              "cupy": None, "cuda_runtime": None, "cuda_driver": None, "tf32": False,
              "tf32_settings": tf32_settings()}
    if module is not numpy:
        runtime = module.cuda.runtime
        record.update(device=_gpu_name(module), cupy=module.__version__,
                      cuda_runtime=_cuda_version(runtime.runtimeGetVersion()),
                      cuda_driver=_cuda_version(runtime.driverGetVersion()), tf32=tf32_enabled())
    return record
