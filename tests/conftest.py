import os
import sys

import numpy
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from strict_xp import strict  # noqa: E402  (registers the stand-in module)


@pytest.fixture(params=["numpy", "strict"])
def xp_module(request):
    """NumPy, and a stand-in device module whose arrays refuse implicit
    conversion to NumPy: numerical code must pass on both."""
    return numpy if request.param == "numpy" else strict
