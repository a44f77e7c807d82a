"""``python -m tools.compare``: see :mod:`tools.compare.cli`."""

import sys

from tools.compare.cli import main

sys.exit(main())
