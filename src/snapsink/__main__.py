"""``python -m snapsink``: the same as the ``snapsink`` command."""

import sys

from .cli import main

sys.exit(main())
