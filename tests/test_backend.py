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
