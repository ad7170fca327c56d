"""``python -m nca_np``: see :mod:`nca_np.cli`."""

import sys

from .cli import main

sys.exit(main())
