"""The fused kernels of a training step, each written once for CuPy beside its NumPy form.

On a GPU the time of a training step at the paper's sizes is set by how
many kernels the host launches, not by the arithmetic (docs/gradients.md#stacked-training).
So the elementwise work of a step is done by a few fused kernels:

=====================  ==========================================  =================================
kernel                 what it computes                            NumPy form
=====================  ==========================================  =================================
:func:`bias_relu`      ``a ← g(a + b)`` in place (Eq. 10)           ``a += b``; ``maximum(a, 0)``
:func:`relu_backward`  ``δz ← δa ⊙ 1[a > 0]`` in place              ``δa *= a > 0``
:func:`output_delta`   ``δz_L`` of the MSE (Eq. 3) through the     four in-place products
                       mask (Eq. 9) and the top layer's ReLU
:func:`squared_error`  ``Σ (ŷ − y)²`` per run, in float64, one      ``sum(square(ŷ − y))``
                       grid-wide two-stage reduction (raw kernel)
:func:`gather_rows`    a batch of float16 frames, cast to float32  ``x[...] = store[rows]``
:data:`ADAM`           Adam's update, one η per run (optim.py)     ``optim.update_range``
=====================  ==========================================  =================================

and the matrix products of a stacked model by :func:`batched_matmul`: one
cuBLAS strided-batched product for all runs, transposes folded into the
call (``cupy.matmul`` would copy every transposed or strided operand).

Each kernel's CUDA source is also valid Python once the helper names it
uses (:data:`NUMPY_HELPERS`: ``relu``, ``sqrt``) are the NumPy
functions beside their CUDA definitions (:data:`CUDA_HELPERS`): the tests
run the very source text on a stand-in module (``tests/strict_xp.py``) and
compare it with the NumPy form. The loss sum is a raw CUDA kernel (a
reduction across blocks is not an elementwise source); its step-by-step
NumPy emulation (:data:`RAW_EMULATIONS`) is what the stand-in runs. None of these kernels has been run on a GPU
by this project's tests; ``scripts/gpucheck.py`` (``make gpucheck``) checks
them there against the NumPy forms.

A module is given the kernels when it offers ``ElementwiseKernel`` and
``RawKernel`` (CuPy, or the counting stand-in of the tests); otherwise the
NumPy form runs with that module's functions. ``scripts/gpucompile.py``
compiles every variant for sm_80 and sm_90 without a GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy

from . import backend
from .backend import array_module

#: CUDA definitions of the helper functions kernel sources may call. ``relu``
#: keeps NaN (as NumPy's maximum does) so a diverging run is still seen.
CUDA_HELPERS = {
    "relu": "template <typename T> __device__ T relu(T z) { return (z > T(0) || z != z) ? z : T(0); }",
}

#: The same helpers for NumPy arrays (used to run a source as Python).
NUMPY_HELPERS = {
    "relu": lambda z: numpy.maximum(z, 0),
    "sqrt": numpy.sqrt,
}


@dataclass(frozen=True)
class Elementwise:
    """An elementwise kernel as ``cupy.ElementwiseKernel`` takes it."""

    name: str
    in_params: str
    out_params: str
    operation: str
    helpers: tuple[str, ...] = ()


BIAS_RELU = Elementwise("nca_np_bias_relu", "T b", "T a", "a = relu(a + b)", ("relu",))
RELU_BACKWARD = Elementwise("nca_np_relu_backward", "T a", "T dz", "dz = dz * (a > T(0))")
OUTPUT_DELTA = Elementwise("nca_np_output_delta", "T v, T y, T scale", "T delta",
                           "delta = (v - y) * scale * (v > T(0))")
MASKED_OUTPUT_DELTA = Elementwise("nca_np_masked_output_delta", "T x, T v, T y, T scale", "T delta",
                                  "delta = (x * v - y) * x * scale * (v > T(0))")
GATHER_ROWS = Elementwise("nca_np_gather_rows",
                          "raw S mixture, raw S vocals, int64 rows, int64 cols, int64 width",
                          "float32 x, float32 y",
                          "x = mixture[rows * width + cols]; y = vocals[rows * width + cols]")
#: Adam's update (docs/method.md#training) with the bias corrections folded
#: into ``correction`` = √(1 − β2ᵗ) / (1 − β1ᵗ) and ``eps_scaled`` = ε √(1 − β2ᵗ);
#: ``lr`` is η, a scalar or one value per run (an (R, 1) column). Its NumPy
#: form is ``optim.update_range``, chunk by chunk.
ADAM = Elementwise("nca_np_adam", "T g, T lr, T beta1, T beta2, T eps_scaled, T correction", "T p, T m, T v",
                   "m = beta1 * m + (1 - beta1) * g; "
                   "v = beta2 * v + (1 - beta2) * g * g; "
                   "p -= lr * correction * m / (sqrt(v) + eps_scaled)")

#: Every elementwise kernel of this module (the tests run each source as Python).
ALL = (BIAS_RELU, RELU_BACKWARD, OUTPUT_DELTA, MASKED_OUTPUT_DELTA, GATHER_ROWS, ADAM)

#: (id(module), kernel name) -> (module, kernel); the module is kept so that
#: an id reused by another module never finds this one's kernel.
_compiled: dict[tuple[int, str], tuple[object, object]] = {}


def compiled(module, spec):
    """``spec`` compiled for ``module`` (cached), or None when the module
    offers no kernels (NumPy): the caller then runs the NumPy form."""
    if not hasattr(module, "ElementwiseKernel"):
        return None
    key = (id(module), spec.name)
    owner, kernel = _compiled.get(key, (None, None))
    if owner is not module:
        preamble = "\n".join(CUDA_HELPERS[name] for name in spec.helpers)
        options = {"preamble": preamble} if preamble else {}
        kernel = module.ElementwiseKernel(spec.in_params, spec.out_params, spec.operation, spec.name, **options)
        _compiled[key] = (module, kernel)
    return kernel


def bias_relu(a, b):
    """One layer's bias and ReLU in place: ``a ← g(a + b)`` (Eq. 10).

    Args:
        a: (..., n) pre-activations without bias (e.g. (R, B, n)); overwritten.
        b: biases broadcastable against ``a`` (e.g. (R, 1, n)).
    """
    module = array_module(a)
    kernel = compiled(module, BIAS_RELU)
    if kernel is not None:
        kernel(b, a)
        return a
    a += b
    module.maximum(a, 0, out=a)
    return a


def relu_backward(dz, a):
    """``δz ← δa ⊙ 1[a > 0]`` in place: ``dz`` holds δa and becomes δz; ``a``
    is the layer's ReLU output (``a > 0`` exactly where ``z > 0``)."""
    module = array_module(dz)
    kernel = compiled(module, RELU_BACKWARD)
    if kernel is not None:
        kernel(a, dz)
        return dz
    dz *= a > 0
    return dz


def output_delta(v, y, x=None, *, scale, out):
    """The gradient of the MSE at the top layer's pre-activation, ``δz_L``.

    ``δŷ = scale (ŷ − y)`` with ``scale = 2/(B F)`` (Eq. 3); for a mask model
    ``ŷ = x ⊙ v`` and ``δv = δŷ ⊙ x`` (Eq. 9), else ``δv = δŷ``; then the top
    ReLU's gate, ``δz_L = δv ⊙ 1[v > 0]``.

    Args:
        v: (R, B, F) decoder outputs (the top layer's ReLU output).
        y: (B, F) targets; x: (B, F) inputs for a mask model, else None.
        scale: 2/(B F).
        out: (R, B, F) array for δz_L.
    """
    module = array_module(v)
    typed = v.dtype.type(scale)
    if x is not None:
        kernel = compiled(module, MASKED_OUTPUT_DELTA)
        if kernel is not None:
            kernel(x, v, y, typed, out)
            return out
        module.multiply(x, v, out=out)
        out -= y
        out *= x
    else:
        kernel = compiled(module, OUTPUT_DELTA)
        if kernel is not None:
            kernel(v, y, typed, out)
            return out
        module.subtract(v, y, out=out)
    out *= typed
    out *= v > 0
    return out


def squared_error(v, y, x=None, *, out):
    """Per run, the summed squared error of a batch, ``Σ_bf (ŷ − y)²`` in float64.

    On a device, one launch of the grid-wide reduction of
    :data:`SQUARED_ERROR_SOURCE` (many blocks per run, not one); on NumPy a
    sum over the batch and the frequencies.

    Args:
        v: (R, B, F) decoder outputs; ``ŷ = x ⊙ v`` when ``x`` is given, else ``v``.
        y: (B, F) targets.
        out: (R,) float64 array for the sums (the squares are exact in
            float64; only the summation order differs between modules).
    """
    module = array_module(v)
    kernel = squared_error_kernel(module, v.dtype, masked=x is not None)
    if kernel is not None:
        return _launch_squared_error(module, kernel, v, y, x, out)
    difference = module.multiply(x, v) if x is not None else v
    difference = module.subtract(difference, y)
    return module.sum(module.square(difference, dtype=numpy.float64), axis=(1, 2), out=out)


# ----------------------------------------------------------------------------
# the loss sum: a deterministic grid-wide two-stage reduction

#: Threads of a block of the loss sum, and elements each thread adds at least.
REDUCE_THREADS, REDUCE_ELEMENTS_PER_THREAD = 256, 4
#: The most blocks a run's sum is split into.
REDUCE_MAX_BLOCKS = 1024

#: ``Σ (ŷ − y)²`` of each run in one launch: a grid of (G, R) blocks; block
#: (g, r) adds a fixed share of run r's elements (thread t of block g takes
#: elements ``i ≡ g·T + t (mod G·T)`` in order, then a tree over the block's
#: threads) and writes the partial sum ``P[r, g]``; the last block of run r to
#: finish (a counter per run, after a memory fence) adds ``P[r, 0…G−1]`` in
#: the same fixed pattern and resets the counter. Which block finishes last
#: changes nothing: every sum has a fixed order, so the result is the same at
#: every run of the same sizes. Products and sums are rounded one at a time
#: (``__dmul_rn``, ``__fmul_rn`` …: no fused multiply–add), as NumPy rounds
#: them. ``real`` is float or double; NCA_NP_MASKED is 1 for a mask model (ŷ = x ⊙ v).
SQUARED_ERROR_SOURCE = r"""
__device__ inline float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ inline double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ inline float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ inline double sub_rn(double a, double b) { return __dsub_rn(a, b); }

__device__ void block_sum(double* shared, double value) {
    shared[threadIdx.x] = value;
    __syncthreads();
    for (unsigned int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) shared[threadIdx.x] = __dadd_rn(shared[threadIdx.x], shared[threadIdx.x + half]);
        __syncthreads();
    }
}

extern "C" __global__ void @NAME@(const real* v, const real* y, const real* x, long long per_run,
                                  double* partials, unsigned int* counters, double* out, long long out_stride) {
    __shared__ double shared[NCA_NP_THREADS];
    __shared__ bool last;
    const long long run = blockIdx.y, blocks = gridDim.x;
    const real* v_run = v + run * per_run;
    double sum = 0.0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < per_run; i += blocks * blockDim.x) {
        real estimate = NCA_NP_MASKED ? mul_rn(x[i], v_run[i]) : v_run[i];
        double error = (double)sub_rn(estimate, y[i]);
        sum = __dadd_rn(sum, __dmul_rn(error, error));
    }
    block_sum(shared, sum);
    if (threadIdx.x == 0) {
        partials[run * blocks + blockIdx.x] = shared[0];
        __threadfence();  // the partial sum is seen by every block before the counter moves
        last = atomicAdd(counters + run, 1u) == blocks - 1;
    }
    __syncthreads();
    if (!last) return;
    sum = 0.0;
    for (long long g = threadIdx.x; g < blocks; g += blockDim.x)
        sum = __dadd_rn(sum, __ldcg(partials + run * blocks + g));  // from L2: written by other blocks
    block_sum(shared, sum);
    if (threadIdx.x == 0) {
        out[run * out_stride] = shared[0];
        counters[run] = 0u;  // ready for the next launch
    }
}
"""


def squared_error_name(dtype, masked: bool) -> str:
    return f"nca_np_squared_error_{numpy.dtype(dtype).name}{'_masked' if masked else ''}"


def squared_error_code(dtype, masked: bool) -> str:
    """The CUDA source of the loss sum for ``dtype`` (float32 or float64)."""
    ctype = {"float32": "float", "float64": "double"}[numpy.dtype(dtype).name]
    defines = (f"typedef {ctype} real;\n#define NCA_NP_MASKED {int(masked)}\n"
               f"#define NCA_NP_THREADS {REDUCE_THREADS}\n")
    return defines + SQUARED_ERROR_SOURCE.replace("@NAME@", squared_error_name(dtype, masked))


def reduction_blocks(per_run: int) -> int:
    """G, the blocks per run of the loss sum: a function of the sizes only,
    so the summation order (and the result) is the same on every device."""
    wanted = -(-per_run // (REDUCE_THREADS * REDUCE_ELEMENTS_PER_THREAD))
    return int(min(max(wanted, 1), REDUCE_MAX_BLOCKS))


def squared_error_kernel(module, dtype, *, masked: bool):
    """The compiled loss sum of ``module`` (cached), or None when the module
    offers no raw kernels (NumPy)."""
    if not hasattr(module, "RawKernel"):
        return None
    name = squared_error_name(dtype, masked)
    key = (id(module), name)
    owner, kernel = _compiled.get(key, (None, None))
    if owner is not module:
        kernel = module.RawKernel(squared_error_code(dtype, masked), name)
        _compiled[key] = (module, kernel)
    return kernel


#: (id(module), runs, blocks) -> (module, partial sums, counters): kept
#: between launches; the counters are zero again after every launch.
_reduction_buffers: dict[tuple[int, int, int], tuple[object, object, object]] = {}


def _launch_squared_error(module, kernel, v, y, x, out):
    runs, per_run = v.shape[0], v.shape[1] * v.shape[2]
    if not v.flags.c_contiguous:
        raise ValueError(f"squared_error needs C-contiguous decoder outputs; got strides {v.strides}")
    # the kernel reads the batch as flat rows: a strided batch (never one of training's) is copied first
    y = y if y.flags.c_contiguous else module.ascontiguousarray(y)
    x = x if x is None or x.flags.c_contiguous else module.ascontiguousarray(x)
    if y.size != per_run or (x is not None and x.size != per_run) or out.shape != (runs,):
        raise ValueError(f"squared_error: shapes {v.shape}, {y.shape} -> {out.shape} do not fit")
    blocks = reduction_blocks(per_run)
    key = (id(module), runs, blocks)
    owner, partials, counters = _reduction_buffers.get(key, (None, None, None))
    if owner is not module:
        partials = module.empty(runs * blocks, dtype=numpy.float64)
        counters = module.zeros(runs, dtype=numpy.uint32)
        _reduction_buffers[key] = (module, partials, counters)
    kernel((blocks, runs), (REDUCE_THREADS,),
           (v, y, x if x is not None else v, numpy.int64(per_run), partials, counters, out,
            numpy.int64(out.strides[0] // out.itemsize)))
    return out


def emulate_squared_error(grid, block, args, *, masked: bool) -> None:
    """What :data:`SQUARED_ERROR_SOURCE` computes, step by step in NumPy on
    host arrays, in the same order (the tests' stand-in runs it as the kernel)."""
    blocks, runs = grid
    threads = block[0]
    v, y, x, per_run, partials, counters, out, _ = args
    v = v.reshape(runs, per_run)
    estimate = x.reshape(-1) * v if masked else v
    error = (estimate - y.reshape(-1)).astype(numpy.float64)
    squares = error * error
    width = blocks * threads
    padded = numpy.zeros((runs, -(-per_run // width) * width))
    padded[:, :per_run] = squares
    sums = numpy.zeros((runs, width))
    for chunk in padded.reshape(runs, -1, width).transpose(1, 0, 2):  # each thread in order
        sums += chunk
    block_sums = _tree_sum(sums.reshape(runs, blocks, threads))
    partials.reshape(runs, blocks)[...] = block_sums
    final = numpy.zeros((runs, -(-blocks // threads) * threads))
    final[:, :blocks] = block_sums
    totals = numpy.zeros((runs, threads))
    for chunk in final.reshape(runs, -1, threads).transpose(1, 0, 2):
        totals += chunk
    out[...] = _tree_sum(totals[:, None, :])[:, 0]
    counters[...] = 0


#: Raw kernels by name, as NumPy functions of (grid, block, args) for the tests' stand-in.
RAW_EMULATIONS = {squared_error_name(dtype, masked): functools.partial(emulate_squared_error, masked=masked)
                  for dtype in (numpy.float32, numpy.float64) for masked in (False, True)}


def _tree_sum(values):
    """Sums over the last axis (a power of two) as a block's shared-memory tree does."""
    values = values.copy()
    half = values.shape[-1] // 2
    while half > 0:
        values[..., :half] += values[..., half : 2 * half]
        half //= 2
    return values[..., 0]


def gather_rows(mixture, vocals, rows, cols, x, y):
    """A batch of frames: ``x ← mixture[rows]``, ``y ← vocals[rows]``, cast
    from the stored precision (float16 or float32) to float32 in the same pass.

    Args:
        mixture, vocals: (N, F) stored frames.
        rows: (B, 1) int64 frame numbers.
        cols: (1, F) int64, ``0 … F−1``.
        x, y: (B, F) float32 outputs.
    """
    module = array_module(mixture)
    kernel = compiled(module, GATHER_ROWS)
    if kernel is not None:
        width = numpy.int64(mixture.shape[1])
        kernel(mixture.reshape(-1), vocals.reshape(-1), rows, cols, width, x, y)
        return x, y
    flat_rows = rows.reshape(-1)
    x[...] = module.take(mixture, flat_rows, axis=0)
    y[...] = module.take(vocals, flat_rows, axis=0)
    return x, y


def adam_kernel(module):
    """The fused Adam kernel of ``module``, or None on NumPy (see :data:`ADAM`)."""
    return compiled(module, ADAM)


# ----------------------------------------------------------------------------
# batched matrix products


def _is_cupy(module) -> bool:
    return getattr(module, "__name__", "") == "cupy"


def batched_matmul(a, b, *, transpose_a=False, transpose_b=False, out):
    """``out[r] = op(a[r]) op(b[r])`` for every run r, ``op`` a transpose when asked.

    A 2-D operand is shared by every run (a batch of frames). Every matrix
    must have contiguous rows (any row and batch strides): stacked
    parameters are strided views of the runs' rows of one flat buffer.

    Args:
        a, b: (R, M, K) / (R, K, N) stacks, or 2-D, before ``op``.
        out: (R, M, N) array the products are written to.
    """
    module = array_module(out)
    if _is_cupy(module):
        return _cublas_batched(module, a, b, transpose_a, transpose_b, out)
    op_a = _transposed(a) if transpose_a else a
    op_b = _transposed(b) if transpose_b else b
    return module.matmul(op_a, op_b, out=out)


def _transposed(array):
    return array.T if array.ndim == 2 else array.transpose(0, 2, 1)


def _matrix_layout(shape, strides, itemsize) -> tuple[int, int]:
    """(leading dimension, batch stride) in elements of a stack (or a shared
    2-D matrix: batch stride 0) whose rows are contiguous."""
    if strides[-1] != itemsize and shape[-1] > 1:
        raise ValueError(f"batched_matmul needs contiguous rows; got strides {strides} for shape {shape}")
    leading = max(strides[-2] // itemsize, shape[-1], 1)
    batch = strides[0] // itemsize if len(shape) == 3 else 0
    return leading, batch


def gemm_arguments(a_shape, a_strides, b_shape, b_strides, out_shape, out_strides, itemsize,
                   transpose_a=False, transpose_b=False) -> dict:
    """The arguments of ``cublas<t>gemmStridedBatched`` for :func:`batched_matmul`.

    cuBLAS reads matrices column by column, so a row-major matrix reads as
    its transpose: ``out = op(a) op(b)`` is computed as
    ``outᵀ = op(b)ᵀ op(a)ᵀ`` with ``b`` as cuBLAS's first operand, each
    transposed exactly when the caller asked for its transpose.

    Returns:
        dict with ``transa, transb`` (0: as stored, 1: transposed), ``m, n,
        k``, ``lda, stride_a`` (of ``b``), ``ldb, stride_b`` (of ``a``),
        ``ldc, stride_c`` and ``batch``, in elements.
    """
    rows_a, inner_a = (a_shape[-1], a_shape[-2]) if transpose_a else (a_shape[-2], a_shape[-1])
    inner_b, cols_b = (b_shape[-1], b_shape[-2]) if transpose_b else (b_shape[-2], b_shape[-1])
    if inner_a != inner_b or tuple(out_shape[-2:]) != (rows_a, cols_b):
        raise ValueError(f"batched_matmul: shapes {tuple(a_shape)}, {tuple(b_shape)} -> {tuple(out_shape)} do not fit")
    if len(out_shape) != 3:
        raise ValueError(f"batched_matmul writes a stack (R, M, N), got {tuple(out_shape)}")
    # cuBLAS reads `batch` matrices of every 3-D operand: fewer would be read out of bounds
    for operand in (a_shape, b_shape):
        if len(operand) == 3 and operand[0] != out_shape[0]:
            raise ValueError(f"batched_matmul: a stack of {operand[0]} matrices {tuple(operand)} for "
                             f"{out_shape[0]} outputs {tuple(out_shape)}")
    lda, stride_a = _matrix_layout(b_shape, b_strides, itemsize)
    ldb, stride_b = _matrix_layout(a_shape, a_strides, itemsize)
    ldc, stride_c = _matrix_layout(out_shape, out_strides, itemsize)
    return {"transa": int(transpose_b), "transb": int(transpose_a), "m": cols_b, "n": rows_a, "k": inner_a,
            "lda": lda, "stride_a": stride_a, "ldb": ldb, "stride_b": stride_b, "ldc": ldc, "stride_c": stride_c,
            "batch": out_shape[0]}


def tf32_enabled() -> bool:
    """Whether float32 products may use TF32 tensor cores (:func:`nca_np.backend.tf32_enabled`)."""
    return backend.tf32_enabled()


def _cublas_batched(module, a, b, transpose_a, transpose_b, out):
    """:func:`batched_matmul` as one ``cublasGemmStridedBatchedEx`` call (never run
    by the tests: checked on a GPU by scripts/gpucheck.py)."""
    from cupy.cuda import device
    from cupy_backends.cuda.api import runtime
    from cupy_backends.cuda.libs import cublas

    dtype = out.dtype
    if a.dtype != dtype or b.dtype != dtype or dtype not in (numpy.float32, numpy.float64):
        raise TypeError(f"batched_matmul takes float32 or float64 arrays of one dtype, got {a.dtype}, {b.dtype}, {dtype}")
    args = gemm_arguments(a.shape, a.strides, b.shape, b.strides, out.shape, out.strides, dtype.itemsize,
                          transpose_a, transpose_b)
    if dtype == numpy.float32:
        data_type = runtime.CUDA_R_32F
        compute = cublas.CUBLAS_COMPUTE_32F_FAST_TF32 if tf32_enabled() else cublas.CUBLAS_COMPUTE_32F
    else:
        data_type, compute = runtime.CUDA_R_64F, cublas.CUBLAS_COMPUTE_64F
    one, zero = numpy.array(1, dtype=dtype), numpy.array(0, dtype=dtype)
    cublas.gemmStridedBatchedEx(
        device.get_cublas_handle(), args["transa"], args["transb"], args["m"], args["n"], args["k"],
        one.ctypes.data, b.data.ptr, data_type, args["lda"], args["stride_a"],
        a.data.ptr, data_type, args["ldb"], args["stride_b"],
        zero.ctypes.data, out.data.ptr, data_type, args["ldc"], args["stride_c"],
        args["batch"], compute, cublas.CUBLAS_GEMM_DEFAULT)
    return out
