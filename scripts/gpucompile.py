"""Compile every CUDA kernel the code can launch, for sm_80 and sm_90, without a GPU.

    python scripts/gpucompile.py [--arch sm_80 sm_90]      (make gpucompile [CUPY=cupy-cuda12x])

Needs CuPy and NVRTC (``pip install 'cupy-cuda12x[ctk]'``), not a device:
each kernel of ``nca_np/kernels.py`` is generated the way CuPy generates it
at a launch (its code generator, for the argument types, dimensions and
index widths the training step passes) and compiled by NVRTC to a cubin for
each architecture, with ptxas's report. One line per variant and
architecture: OK or FAIL, registers, spill bytes, and for a float32 kernel
whether its PTX holds float64 arithmetic (only the loss sum should: it
sums in float64 on purpose). The exit status is 1 if any variant fails.

The elementwise variants come from CuPy's private code generator
(``cupy._core._kernel``), which may change between CuPy versions: a
failure to generate is reported as such, not as a compile error. Run it
after a change to a kernel or to CuPy, where there is no GPU to run
``make gpucheck``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nca_np import kernels  # noqa: E402

#: CuPy's _ArgInfo kinds (cupy/_core/_kernel.pyx): an array, the loop's indexer, a scalar.
NDARRAY, INDEXER, SCALAR = 1, 2, 3
#: Arrays above this many elements are indexed with 64 bits by CuPy.
INDEX_32_LIMIT = 2**31 - 1


def elementwise_variants():
    """(label, spec, {parameter: (dtype, ndim, contiguous, 32-bit index) or
    dtype for a scalar}, loop ndim) for every launch the code makes."""
    variants = []
    for dtype in (numpy.float32, numpy.float64):
        name = numpy.dtype(dtype).name
        full = lambda ndim: (dtype, ndim, True, True)  # noqa: E731
        spread = lambda ndim: (dtype, ndim, False, True)  # noqa: E731  (a broadcast operand)
        variants += [
            (f"bias_relu {name} R=1", kernels.BIAS_RELU, {"b": spread(2), "a": full(2)}, 2),
            (f"bias_relu {name} R>1", kernels.BIAS_RELU, {"b": spread(3), "a": full(3)}, 3),
            (f"relu_backward {name}", kernels.RELU_BACKWARD, {"a": full(1), "dz": full(1)}, 1),
        ]
        for spec in (kernels.OUTPUT_DELTA, kernels.MASKED_OUTPUT_DELTA):
            for runs, ndim, shared in (("R=1", 1, full(1)), ("R>1", 2, spread(2))):
                args = {"v": full(ndim), "y": shared, "scale": dtype, "delta": full(ndim)}
                if spec is kernels.MASKED_OUTPUT_DELTA:
                    args["x"] = shared
                variants.append((f"{spec.name[7:]} {name} {runs}", spec, args, ndim))
        scalars = {"beta1": dtype, "beta2": dtype, "eps_scaled": dtype, "correction": dtype}
        for runs, ndim, lr in (("one model (scalar η)", 1, dtype), ("R=1", 1, spread(1)), ("R>1", 2, spread(2))):
            args = dict(scalars, g=full(ndim), lr=lr, p=full(ndim), m=full(ndim), v=full(ndim))
            variants.append((f"adam {name} {runs}", kernels.ADAM, args, ndim))
    for store in (numpy.float16, numpy.float32):
        for wide in (False, True):
            raw = (store, 1, True, not wide)
            args = {"mixture": raw, "vocals": raw, "rows": (numpy.int64, 2, False, True),
                    "cols": (numpy.int64, 2, False, True), "width": numpy.int64,
                    "x": (numpy.float32, 2, True, True), "y": (numpy.float32, 2, True, True)}
            label = f"gather_rows from {numpy.dtype(store).name}{' > 2^31 elements (64-bit index)' if wide else ''}"
            variants.append((label, kernels.GATHER_ROWS, args, 2))
    return variants


def elementwise_code(spec, args: dict, loop_ndim: int) -> str:
    """The source CuPy generates for ``spec`` launched with ``args``."""
    from cupy._core import _carray
    from cupy._core import _kernel as generator

    in_params = generator._get_param_info(spec.in_params, True)
    out_params = generator._get_param_info(spec.out_params, False)
    params = in_params + out_params + (generator.ParameterInfo("CIndexer _ind", False),)
    infos, types = [], {}
    for param in in_params + out_params:
        described = args[param.name]
        if isinstance(described, tuple):
            dtype, ndim, contiguous, index_32 = described
            infos.append(generator._ArgInfo(NDARRAY, __import__("cupy").ndarray, numpy.dtype(dtype), ndim,
                                            contiguous, index_32))
        else:
            dtype = described
            infos.append(generator._ArgInfo(SCALAR, dtype, numpy.dtype(dtype), 0, True, True))
        if param.ctype is not None and param.dtype is None:
            types[param.ctype] = numpy.dtype(dtype).type
    infos.append(generator._ArgInfo(INDEXER, _carray.Indexer, None, loop_ndim, True, True))
    type_map = generator._TypeMap(tuple(sorted(types.items())))
    preamble = "\n".join(kernels.CUDA_HELPERS[name] for name in spec.helpers)
    return generator._get_elementwise_kernel_code(tuple(infos), type_map, params, spec.operation, spec.name,
                                                  preamble)


def compile_source(source: str, arch: str, *, ptx: bool = False, cupy_headers: bool = True):
    """(ok, ptxas report or error log, PTX text or None) of NVRTC on ``source``,
    after CuPy's headers as CuPy puts them before a generated kernel (a raw
    kernel, ``cupy_headers=False``, is compiled as written)."""
    from cupy._core import core
    from cupy_backends.cuda.libs import nvrtc

    headers = "".join(f"#include <{header}>\n" for header in core._cupy_header_list) if cupy_headers else ""
    target = arch.replace("sm_", "compute_") if ptx else arch
    options = list(core.assemble_cupy_compiler_options(())) + ["-ftz=true", f"-arch={target}"]
    if not ptx:
        options.append("-Xptxas=-v")
    program = nvrtc.createProgram(headers + source, "kern.cu", [], [])
    try:
        nvrtc.compileProgram(program, options)
    except nvrtc.NVRTCError:
        return False, nvrtc.getProgramLog(program), None
    log = nvrtc.getProgramLog(program)
    text = nvrtc.getPTX(program).decode(errors="replace") if ptx else None
    return True, log, text


def ptxas_summary(log: str) -> tuple[int, int]:
    """(registers, spill bytes) of the largest entry in a ptxas report."""
    registers = max((int(n) for n in re.findall(r"Used (\d+) registers", log)), default=-1)
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return registers, spills


def float64_instructions(ptx: str) -> int:
    """Instructions of the PTX that compute on float64 (conversions to it included)."""
    return len(re.findall(r"^\s*(?!ld|st|mov)[a-z.]+\.f64\b", ptx, flags=re.M))


def all_sources():
    """(label, source, float32 kernel expected free of float64?, generated by
    CuPy?) of every variant."""
    for label, spec, args, ndim in elementwise_variants():
        try:
            yield label, elementwise_code(spec, args, ndim), "float32" in label and "gather" not in label, True
        except Exception as exc:  # CuPy's private generator changed
            yield label, exc, False, True
    for dtype in (numpy.float32, numpy.float64):
        for masked in (False, True):
            label = f"squared_error {numpy.dtype(dtype).name}{' masked' if masked else ''} (grid-wide sum)"
            yield label, kernels.squared_error_code(dtype, masked), False, False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["sm_80", "sm_90"])
    args = parser.parse_args(argv)
    try:
        import cupy
        from cupy_backends.cuda.libs import nvrtc
        version = nvrtc.getVersion()
    except Exception as exc:
        print(f"gpucompile.py: error: CuPy with NVRTC is needed ({exc}): pip install 'cupy-cuda12x[ctk]>=14'",
              file=sys.stderr)
        return 2
    print(f"CuPy {cupy.__version__}, NVRTC {version[0]}.{version[1]}; compiling for {', '.join(args.arch)}")
    passed = failed = 0
    for label, source, float32_only, generated in all_sources():
        if isinstance(source, Exception):
            print(f"FAIL  {label}: CuPy's code generator: {type(source).__name__}: {source}")
            failed += 1
            continue
        for arch in args.arch:
            ok, log, _ = compile_source(source, arch, cupy_headers=generated)
            if not ok:
                print(f"FAIL  {label} {arch}: {log.strip().splitlines()[0] if log.strip() else 'no log'}")
                failed += 1
                continue
            registers, spills = ptxas_summary(log)
            note = ""
            if float32_only:
                count = float64_instructions(compile_source(source, arch, ptx=True, cupy_headers=generated)[2])
                note = f", float64 instructions {count}"
            good = spills == 0 and (not float32_only or count == 0)
            print(f"{'OK  ' if good else 'FAIL'}  {label} {arch}: {registers} registers, {spills} bytes spilled{note}",
                  flush=True)
            passed, failed = passed + good, failed + (not good)
    print(f"\n{passed} of {passed + failed} compile")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
