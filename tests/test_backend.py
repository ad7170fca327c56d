import sys

import numpy
import pytest

from nca_np import backend
from nca_np.models import build_model
from strict_xp import StrictArray, strict


def test_default_is_numpy(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert backend.use() is numpy
    assert backend.name() == "numpy"


def test_environment_selects_and_bad_names_fail(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "tpu")
    with pytest.raises(backend.BackendError, match="unknown backend 'tpu'.*NCA_NP_BACKEND"):
        backend.use()
    monkeypatch.setenv(backend.ENV_VAR, "cpu")
    assert backend.use() is numpy


def test_cupy_request_without_gpu_is_one_clear_error():
    try:
        module = backend.use("gpu")
    except backend.BackendError as exc:
        message = str(exc)
        assert "\n" not in message and "CuPy backend requested" in message
    else:  # a machine with a working GPU
        assert module.__name__ == "cupy"
    finally:
        backend.use("numpy")


def test_array_module_and_host_transfer():
    a = StrictArray(numpy.arange(3.0))
    assert backend.array_module(a) is strict
    assert backend.array_module(numpy.ones(2), 1.0) is numpy
    assert backend.array_module(1.0, a) is strict
    host = backend.to_host(a)
    assert isinstance(host, numpy.ndarray) and host.tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(TypeError):
        numpy.asarray(a)


def test_same_seed_same_numbers_on_every_module():
    first = build_model("dae", 5, seed=3, module=numpy)
    second = build_model("dae", 5, seed=3, module=strict)
    for p, q in zip(first.params, second.params):
        numpy.testing.assert_array_equal(p, backend.to_host(q))
    assert not numpy.array_equal(first.params[0], build_model("dae", 5, seed=4).params[0])


def test_rng_streams_are_independent_and_reproducible():
    assert backend.rng(1).normal() == backend.rng(1).normal()
    assert backend.rng(1, 1).normal() == backend.rng(1, 1).normal()
    assert backend.rng(1, 1).normal() != backend.rng(1).normal()


def test_auto_falls_back_to_numpy_without_a_gpu():
    try:
        module = backend.use("auto")
        assert module is numpy or module.__name__ == "cupy"
    finally:
        backend.use("numpy")


# ---------------------------------------------------------------------------
# --device auto: the CPU only when no GPU is visible, and always said first


class NVRTCError(RuntimeError):
    """What CuPy raises when NVRTC or its builtins library cannot be loaded."""


def _fake_cupy(*, fails_at: str):
    """A CuPy stand-in that fails at its first array ("array") or at its first
    compiled kernel ("kernel"), as CuPy does without NVRTC or its headers."""
    import types

    fake = types.ModuleType("cupy")
    fake.__version__ = "14.0.0"
    fake.float32 = numpy.float32

    def arange(n, dtype=None):
        if fails_at == "array":
            raise NVRTCError("NVRTC_ERROR_BUILTIN_OPERATION_FAILURE (7): libnvrtc-builtins.so.12 not found")
        return StrictArray(numpy.arange(n, dtype=dtype))

    def elementwise_kernel(*args, **kwargs):
        raise NVRTCError("NVRTC_ERROR_COMPILATION (6): catastrophic error: cannot open source file cuda_fp16.h")

    fake.arange, fake.ElementwiseKernel = arange, elementwise_kernel
    return fake


def _first_lines(capsys, argv):
    from nca_np import cli

    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out.splitlines()[:1], captured.err


@pytest.fixture
def empty_workdir(tmp_path, monkeypatch):
    """A work folder without results: `report` prints the device line, then
    stops with its own one-line error (the cheapest command that chooses a device)."""
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    yield ["report", "--profile", "demo", "--workdir", str(tmp_path), "--device", "auto"]
    backend.use("numpy")


def test_auto_without_cupy_and_without_a_gpu_says_cpu_first(monkeypatch, capsys, empty_workdir):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy fails
    monkeypatch.setenv(backend.GPUS_VISIBLE_VAR, "0")
    status, first, err = _first_lines(capsys, empty_workdir)
    assert first == [f"CPU (NumPy {numpy.__version__}): no GPU found"]
    assert status == 2 and "no couplings results" in err  # the stage ran, on the CPU


@pytest.mark.parametrize("fails_at", ["array", "kernel"])
def test_auto_with_a_broken_cupy_and_no_gpu_falls_back_and_says_why(monkeypatch, capsys, empty_workdir, fails_at):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(fails_at=fails_at))
    monkeypatch.setenv(backend.GPUS_VISIBLE_VAR, "0")
    status, first, _ = _first_lines(capsys, empty_workdir)
    assert first == [f"CPU (NumPy {numpy.__version__}): CuPy is installed but no GPU is visible"]


@pytest.mark.parametrize("fails_at", ["array", "kernel"])
def test_auto_with_a_visible_gpu_and_a_broken_cupy_stops_with_the_cause_and_the_fix(
        monkeypatch, capsys, empty_workdir, fails_at):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(fails_at=fails_at))
    monkeypatch.setenv(backend.GPUS_VISIBLE_VAR, "1")
    status, first, err = _first_lines(capsys, empty_workdir)
    assert status == 2 and first == []  # nothing computed, nothing printed on stdout
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "1 GPU visible but CuPy cannot use it (" in lines[0] and "NVRTC_ERROR" in lines[0]
    assert "cupy-cuda12x[ctk]" in lines[0] and "--device cpu" in lines[0]


def test_auto_with_a_visible_gpu_and_no_cupy_names_the_install(monkeypatch, capsys, empty_workdir):
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setenv(backend.GPUS_VISIBLE_VAR, "2")
    status, first, err = _first_lines(capsys, empty_workdir)
    assert status == 2 and first == []
    assert "2 GPUs visible" in err and "pip install 'nca_np[cuda12]'" in err


def test_device_cpu_overrides_a_visible_gpu_and_says_so(monkeypatch, capsys, empty_workdir):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(fails_at="kernel"))
    monkeypatch.setenv(backend.GPUS_VISIBLE_VAR, "1")
    status, first, err = _first_lines(capsys, empty_workdir[:-1] + ["cpu", "--quiet"])
    assert first == [f"CPU (NumPy {numpy.__version__}): chosen (--device cpu)"]
    assert "no couplings results" in err


def test_gpu_detection_reads_the_override_and_else_the_driver(monkeypatch):
    monkeypatch.setenv(backend.GPUS_VISIBLE_VAR, "3")
    assert backend.gpus_visible() == 3
    monkeypatch.delenv(backend.GPUS_VISIBLE_VAR)
    monkeypatch.setattr(backend, "_driver_gpu_count", lambda: None)  # no libcuda.so.1
    monkeypatch.setattr(backend, "_nvidia_smi_gpu_count", lambda: 4)
    assert backend.gpus_visible() == 4
    monkeypatch.setattr(backend, "_driver_gpu_count", lambda: 0)  # cuInit failed, or the GPUs are hidden
    assert backend.gpus_visible() == 4  # nvidia-smi still lists them: a GPU is there
    monkeypatch.setattr(backend, "_driver_gpu_count", lambda: 2)
    monkeypatch.setattr(backend, "_nvidia_smi_gpu_count", lambda: 0)
    assert backend.gpus_visible() == 2
    monkeypatch.setattr(backend, "_driver_gpu_count", lambda: None)
    assert backend.gpus_visible() == 0


def test_device_record_is_json_and_names_the_cpu():
    import json

    backend.use("numpy")
    record = json.loads(json.dumps(backend.device_record()))
    assert record["backend"] == "numpy" and record["device"] == "CPU" and record["cupy"] is None
    assert record["line"] == backend.device_line() and record["tf32"] is False
