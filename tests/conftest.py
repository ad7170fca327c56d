import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

sys.path.insert(0, os.path.dirname(__file__))
# The tests run the built-in corpus's profiles, which refuse a MUSDB_PATH of
# the user's rather than ignore it; tests that need it set it themselves.
os.environ.pop("MUSDB_PATH", None)

from strict_xp import strict  # noqa: E402  (registers the stand-in module)

#: The shipped tiny profile (configs/tiny.toml): the size every whole-pipeline test runs at.
TINY_PROFILE = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"


@pytest.fixture(params=["numpy", "strict"])
def xp_module(request):
    """NumPy, and a stand-in device module whose arrays refuse implicit
    conversion to NumPy: numerical code must pass on both."""
    return numpy if request.param == "numpy" else strict


@pytest.fixture
def tiny_profile() -> Path:
    """Path of configs/tiny.toml, for tests that run whole pipelines."""
    return TINY_PROFILE


@pytest.fixture
def live_pid():
    """The pid of a process that runs for the test's duration (not this one)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid
