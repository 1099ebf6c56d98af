"""``python -m glass_pyg``: the ``glass-pyg`` command (also under ``torchrun ... -m glass_pyg``)."""
import sys

from .cli import main

sys.exit(main())
