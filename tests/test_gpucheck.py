"""scripts/gpucheck.py, the GPU self-check, run on NumPy as `make gpucheck DEVICE=cpu` runs it."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpucheck.py"


def test_gpucheck_passes_on_the_cpu_with_one_line_per_check():
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick"], capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    verdicts = [line for line in lines if line.startswith(("PASS", "FAIL"))]
    assert len(verdicts) > 60 and all(line.startswith("PASS") for line in verdicts)
    for needle in ("gradient model dae stacked", "fused Adam, one step size per run, float32",
                   "batch gather from float16 frames", "stacked training step, mss-dae ×3: parameters",
                   "NCA compositional, sf", "kernel launches per training step, mss-dae: the same for 1 and 3 runs",
                   "fused Adam at R = 10 runs", "float32 training step, sf ×3 at F = 257: gradients",
                   "float32 NCA compositional, mss-dae at F = 257: gradients",
                   "resumed after epoch 2 from its checkpoint = uninterrupted", "a NaN loss stops it"):
        assert any(needle in line for line in verdicts), needle
    assert sum(line.startswith("TIME  training step") for line in lines) == 3
    assert lines[0] == f"CPU (NumPy {numpy.__version__}): chosen (--device cpu)"
    assert any(line.startswith("SKIP  batch gather from a float16 store above 2^31") for line in lines)
    assert f"{len(verdicts)} of {len(verdicts)} checks pass" in result.stdout


def test_gpucheck_fails_when_the_stacked_step_is_wrong(monkeypatch, capsys):
    from nca_np import stacked
    spec = importlib.util.spec_from_file_location("gpucheck_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(stacked, "relu_backward", lambda dz, a: dz)  # a forgotten ReLU gate
    assert script.main(["--device", "cpu", "--quick"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  stacked training step, mss-dae ×3: parameters" in out
    assert "FAIL  gradient model mss-dae stacked ×2" in out


def test_the_large_gather_check_reads_back_the_rows_it_wrote(monkeypatch, capsys):
    """The 64-bit gather check, run small on the counting stand-in (which has
    CuPy's kernels) as if the device had room for it."""
    from nca_np import backend
    from strict_xp import counting
    spec = importlib.util.spec_from_file_location("gpucheck_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    checks = script.Checks()
    script.large_gather_check(checks, counting, n_freq=7, elements=1000)  # no room known: skipped
    assert capsys.readouterr().out.startswith("SKIP  batch gather from a float16 store above 2^31")
    monkeypatch.setattr(backend, "free_device_bytes", lambda module=None: 2**40)
    script.large_gather_check(checks, counting, n_freq=7, elements=1000)
    assert checks.count == 1 and checks.failures == 0, capsys.readouterr().out
