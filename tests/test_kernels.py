"""The fused kernels of nca_np.kernels: each CUDA source, run as Python on the
counting stand-in, equals its NumPy form; the cuBLAS arguments of the
batched products, run through a column-major emulator of cuBLAS, give the
products NumPy gives."""

import numpy
import pytest

from nca_np import backend, kernels
from nca_np.stacked import StackedAdam, StackedModel
from strict_xp import counting


def _both(*host_arrays):
    """Each array on NumPy and, as a copy, on the counting stand-in."""
    return [a.copy() for a in host_arrays], [backend.to_device(a.copy(), counting) for a in host_arrays]


def _draw(shape, seed, low=-1.0, high=1.0, dtype=numpy.float64):
    return backend.rng(seed).uniform(low, high, size=shape).astype(dtype)


def test_every_source_is_written_once_for_both_forms():
    """The module's kernels are the ones listed, each with its helpers defined
    for CUDA and for NumPy."""
    for spec in kernels.ALL:
        for helper in spec.helpers:
            assert helper in kernels.CUDA_HELPERS and helper in kernels.NUMPY_HELPERS
    assert len({spec.name for spec in kernels.ALL}) == len(kernels.ALL)


def test_bias_relu_source_equals_the_numpy_form():
    (a, b), (a_dev, b_dev) = _both(_draw((3, 4, 5), 0), _draw((3, 1, 5), 1))
    kernels.bias_relu(a, b)
    counting.reset()
    kernels.bias_relu(a_dev, b_dev)
    assert counting.launches == 1
    numpy.testing.assert_array_equal(backend.to_host(a_dev), a)
    assert (a == 0).any() and (a > 0).any()


def test_relu_backward_source_equals_the_numpy_form():
    (dz, a), (dz_dev, a_dev) = _both(_draw((2, 4, 5), 2), numpy.maximum(_draw((2, 4, 5), 3), 0))
    kernels.relu_backward(dz, a)
    kernels.relu_backward(dz_dev, a_dev)
    numpy.testing.assert_array_equal(backend.to_host(dz_dev), dz)
    assert (dz[a == 0] == 0).all() and (dz[a > 0] != 0).all()


@pytest.mark.parametrize("masked", [False, True], ids=["estimate", "mask"])
def test_output_delta_and_squared_error_sources_equal_the_numpy_forms(masked):
    v = numpy.maximum(_draw((3, 4, 6), 4), 0)
    (v, y, x), (v_dev, y_dev, x_dev) = _both(v, _draw((4, 6), 5), _draw((4, 6), 6, 0.0, 2.0))
    x, x_dev = (x, x_dev) if masked else (None, None)
    delta, delta_dev = numpy.empty_like(v), counting.empty_like(v_dev)
    kernels.output_delta(v, y, x, scale=2.0 / 24, out=delta)
    kernels.output_delta(v_dev, y_dev, x_dev, scale=2.0 / 24, out=delta_dev)
    numpy.testing.assert_array_equal(backend.to_host(delta_dev), delta)
    estimate = x * v if masked else v
    numpy.testing.assert_allclose(delta, 2.0 / 24 * (estimate - y) * (x if masked else 1) * (v > 0), rtol=1e-15)
    sums, sums_dev = numpy.empty(3), counting.empty(3, dtype=numpy.float64)
    kernels.squared_error(v, y, x, out=sums)
    kernels.squared_error(v_dev, y_dev, x_dev, out=sums_dev)
    numpy.testing.assert_allclose(backend.to_host(sums_dev), sums, rtol=1e-15)
    numpy.testing.assert_allclose(sums, ((estimate - y) ** 2).sum(axis=(1, 2)), rtol=1e-14)


def test_gather_source_casts_float16_frames_to_float32():
    store = _draw((10, 6), 7, 0.0, 4.0).astype(numpy.float16)
    (mixture, vocals), (mixture_dev, vocals_dev) = _both(store, store[::-1].copy())
    rows, cols = numpy.array([[3], [0], [9]]), numpy.arange(6).reshape(1, -1)
    x, y = numpy.empty((3, 6), numpy.float32), numpy.empty((3, 6), numpy.float32)
    kernels.gather_rows(mixture, vocals, rows, cols, x, y)
    x_dev, y_dev = counting.empty((3, 6), dtype=numpy.float32), counting.empty((3, 6), dtype=numpy.float32)
    counting.reset()
    kernels.gather_rows(mixture_dev, vocals_dev, backend.to_device(rows, counting), backend.to_device(cols, counting),
                        x_dev, y_dev)
    assert counting.launches == 1  # gather and cast of both arrays in one kernel
    numpy.testing.assert_array_equal(x, store[[3, 0, 9]].astype(numpy.float32))
    numpy.testing.assert_array_equal(y, store[::-1][[3, 0, 9]].astype(numpy.float32))
    numpy.testing.assert_array_equal(backend.to_host(x_dev), x)
    numpy.testing.assert_array_equal(backend.to_host(y_dev), y)


def test_fused_stacked_adam_source_equals_the_chunked_update_with_one_rate_per_run():
    host = StackedModel.build("dae", 5, [0, 1, 2], dtype=numpy.float64, module=numpy)
    device = StackedModel.build("dae", 5, [0, 1, 2], dtype=numpy.float64, module=counting)
    rates = [1e-2, 3e-3, 1e-3]
    adams = [StackedAdam(host, lr=rates), StackedAdam(device, lr=rates)]
    for step in range(5):
        grads = _draw(host.flat.shape, 10 + step)
        adams[0].step(grads)
        counting.reset()
        adams[1].step(backend.to_device(grads, counting))
        assert counting.launches == 1
    numpy.testing.assert_allclose(backend.to_host(device.flat), host.flat, rtol=1e-13, atol=1e-16)
    numpy.testing.assert_allclose(backend.to_host(adams[1].v), adams[0].v, rtol=1e-13)
    moved = numpy.abs(host.flat - StackedModel.build("dae", 5, [0, 1, 2], dtype=numpy.float64,
                                                   module=numpy).flat).max(axis=1)
    assert moved[0] > 2 * moved[1] > 4 * moved[2] > 0  # each run took steps of its own size


# ---------------------------------------------------------------------------
# the cuBLAS call of batched_matmul, through an emulator of cuBLAS


def _offset(view, base) -> int:
    """First element of ``view`` in the flat ``base`` buffer."""
    start = view.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return start // base.itemsize


def _column_major(memory, start, rows, cols, leading):
    p, q = numpy.meshgrid(numpy.arange(rows), numpy.arange(cols), indexing="ij")
    return memory[start + p + q * leading]


def emulate_gemm_strided_batched(args, a, a_base, b, b_base, out, out_base):
    """What cuBLAS's gemmStridedBatched computes with ``args``, reading and
    writing the flat buffers column by column, with b as its first operand."""
    m, n, k = args["m"], args["n"], args["k"]
    first = (m, k) if args["transa"] == 0 else (k, m)
    second = (k, n) if args["transb"] == 0 else (n, k)
    for i in range(args["batch"]):
        A = _column_major(b_base, _offset(b, b_base) + i * args["stride_a"], *first, args["lda"])
        B = _column_major(a_base, _offset(a, a_base) + i * args["stride_b"], *second, args["ldb"])
        C = (A if args["transa"] == 0 else A.T) @ (B if args["transb"] == 0 else B.T)
        p, q = numpy.meshgrid(numpy.arange(m), numpy.arange(n), indexing="ij")
        out_base[_offset(out, out_base) + i * args["stride_c"] + p + q * args["ldc"]] = C


def _stacked_in_rows(base, runs, row, offset, shape):
    """A stack of (runs, *shape) matrices, each inside a row of ``row`` elements."""
    return base.reshape(runs, row)[:, offset : offset + shape[0] * shape[1]].reshape((runs,) + shape)


#: name: (shape and layout of a, of b, layout of out, transpose_a, transpose_b); a layout is
#: "shared" (one 2-D matrix for every run), "stacked" (contiguous) or "strided" (rows of a flat buffer).
CASES = {
    "forward X Wᵀ": (((3, 5), "shared"), ((4, 5), "strided"), "stacked", False, True),
    "first layer's weight gradient δzᵀ X": (((3, 4), "stacked"), ((3, 5), "shared"), "strided", True, False),
    "weight gradient δzᵀ a": (((3, 4), "stacked"), ((3, 5), "stacked"), "strided", True, False),
    "input gradient δz W": (((3, 4), "stacked"), ((4, 5), "strided"), "stacked", False, False),
}
RUNS = 2


def _operand(base, shape, layout):
    if layout == "shared":
        return base[: shape[0] * shape[1]].reshape(shape)
    if layout == "strided":
        return _stacked_in_rows(base, RUNS, base.size // RUNS, 7, shape)
    return base[: RUNS * shape[0] * shape[1]].reshape((RUNS,) + shape)


@pytest.mark.parametrize("case", list(CASES))
def test_cublas_arguments_compute_what_numpy_computes(case):
    (a_shape, a_layout), (b_shape, b_layout), out_layout, transpose_a, transpose_b = CASES[case]
    rng = backend.rng(11)
    a_base, b_base = rng.normal(size=200), rng.normal(size=300)
    a, b = _operand(a_base, a_shape, a_layout), _operand(b_base, b_shape, b_layout)
    op_a = a.swapaxes(-1, -2) if transpose_a else a
    op_b = b.swapaxes(-1, -2) if transpose_b else b
    expected = numpy.matmul(op_a, op_b)
    out_base = numpy.full(400, numpy.nan)
    out = _operand(out_base, expected.shape[1:], out_layout)
    args = kernels.gemm_arguments(a.shape, a.strides, b.shape, b.strides, out.shape, out.strides, 8,
                                  transpose_a, transpose_b)
    emulate_gemm_strided_batched(args, a, a_base, b, b_base, out, out_base)
    numpy.testing.assert_allclose(out, expected, rtol=1e-13)
    written = [_offset(out[r], out_base) + i for r in range(RUNS) for i in range(out[r].size)]
    assert numpy.isnan(numpy.delete(out_base, written)).all()  # nothing outside `out` is written
    out[...] = numpy.nan
    kernels.batched_matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b, out=out)  # the NumPy form
    numpy.testing.assert_allclose(out, expected, rtol=1e-13)


@pytest.mark.parametrize("mistake", ["transpose forgotten", "operands swapped"])
def test_the_emulator_catches_a_planted_mistake(mistake):
    (a_shape, a_layout), (b_shape, b_layout), out_layout, transpose_a, transpose_b = CASES["forward X Wᵀ"]
    rng = backend.rng(12)
    a_base, b_base = rng.normal(size=200), rng.normal(size=300)
    a, b = _operand(a_base, a_shape, a_layout), _operand(b_base, b_shape, b_layout)
    expected = numpy.matmul(a, b.swapaxes(-1, -2))
    out_base = numpy.zeros(400)
    out = _operand(out_base, expected.shape[1:], out_layout)
    args = kernels.gemm_arguments(a.shape, a.strides, b.shape, b.strides, out.shape, out.strides, 8,
                                  transpose_a, transpose_b)
    if mistake == "transpose forgotten":
        emulate_gemm_strided_batched(dict(args, transa=0), a, a_base, b, b_base, out, out_base)
    else:
        emulate_gemm_strided_batched(args, b, b_base, a, a_base, out, out_base)
    assert not numpy.allclose(out, expected)


def test_batched_matmul_refuses_matrices_without_contiguous_rows():
    W = numpy.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="contiguous rows"):
        kernels.gemm_arguments((3, 4), (8, 8 * 3), W.shape, W.strides, (2, 3, 4), (96, 32, 8), 8)


@pytest.mark.parametrize("operand", ["a", "b"])
def test_batched_matmul_refuses_stacks_of_another_batch_size(operand):
    """A 2-run operand for a 3-run output: NumPy's matmul raises, and cuBLAS
    would read a third matrix past the end of the operand."""
    a_shape = (2, 3, 4) if operand == "a" else (3, 3, 4)
    b_shape = (2, 4, 5) if operand == "b" else (3, 4, 5)
    a, b, out = numpy.zeros(a_shape), numpy.zeros(b_shape), numpy.zeros((3, 3, 5))
    with pytest.raises(ValueError):
        numpy.matmul(a, b, out=out)
    with pytest.raises(ValueError, match="a stack of 2 matrices .* for 3 outputs"):
        kernels.gemm_arguments(a.shape, a.strides, b.shape, b.strides, out.shape, out.strides, 8)
    shared = numpy.zeros((3, 4))  # a 2-D operand is shared by every run: no batch to check
    assert kernels.gemm_arguments(shared.shape, shared.strides, (3, 4, 5), (160, 40, 8), out.shape, out.strides,
                                  8)["batch"] == 3


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("masked", [False, True], ids=["estimate", "mask"])
def test_grid_wide_loss_sum_equals_the_numpy_sum_in_one_launch(dtype, masked):
    """The two-stage reduction, run by the stand-in as its step-by-step
    emulation, over several blocks per run, into a strided column."""
    runs, batch, n_freq = 3, 8, 700  # 5600 elements a run: 6 blocks of 256 threads
    assert kernels.reduction_blocks(batch * n_freq) == 6
    v = numpy.maximum(_draw((runs, batch, n_freq), 20, dtype=dtype), 0)
    (v, y, x), (v_dev, y_dev, x_dev) = _both(v, _draw((batch, n_freq), 21, dtype=dtype),
                                             _draw((batch, n_freq), 22, 0.0, 2.0, dtype=dtype))
    x, x_dev = (x, x_dev) if masked else (None, None)
    expected = numpy.empty(runs)
    kernels.squared_error(v, y, x, out=expected)  # the NumPy form
    estimate = (x * v if masked else v).astype(numpy.float64)
    exact = ((estimate - y.astype(numpy.float64)) ** 2).sum(axis=(1, 2))
    table = counting.zeros((runs, 4), dtype=numpy.float64)  # a column of it, as training writes
    for column in (1, 2):  # the first launch also makes the reduction's buffers
        counting.reset()
        kernels.squared_error(v_dev, y_dev, x_dev, out=table[:, column])
    assert counting.launches == 1
    host = backend.to_host(table)
    numpy.testing.assert_array_equal(host[:, 1], host[:, 2])  # the same order at every launch
    assert (host[:, [0, 3]] == 0).all()
    numpy.testing.assert_allclose(host[:, 1], expected, rtol=1e-13)
    if dtype == numpy.float64:
        numpy.testing.assert_allclose(host[:, 1], exact, rtol=1e-13)
    else:  # the float32 difference ŷ − y is rounded before it is squared, in both forms
        numpy.testing.assert_allclose(host[:, 1], exact, rtol=1e-6)


def test_grid_wide_loss_sum_blocks_depend_on_the_sizes_only():
    assert kernels.reduction_blocks(1) == 1
    assert kernels.reduction_blocks(64 * 2049) == 129  # the paper's batch: 129 blocks per run, not 1
    assert kernels.reduction_blocks(10**9) == kernels.REDUCE_MAX_BLOCKS
    v = numpy.ones((2, 4, 5))
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels._launch_squared_error(counting, None, backend.to_device(v, counting)[:, :, ::2],
                                      counting.zeros((4, 3)), None, counting.zeros(2))
    targets = _draw((4, 10), 23)
    out = counting.zeros(2, dtype=numpy.float64)
    kernels.squared_error(backend.to_device(v, counting), backend.to_device(targets, counting)[:, ::2], out=out)
    numpy.testing.assert_allclose(backend.to_host(out), ((v - targets[:, ::2]) ** 2).sum(axis=(1, 2)), rtol=1e-14)
