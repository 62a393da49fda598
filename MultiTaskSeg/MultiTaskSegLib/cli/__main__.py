"""``python -m MultiTaskSegLib.cli`` (and ``torchrun -m MultiTaskSegLib.cli train ...``)."""

import sys

from .program import main

sys.exit(main())
