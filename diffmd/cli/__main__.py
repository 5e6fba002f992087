"""``python -m diffmd.cli``: the ``diffmd`` command."""

import sys

from ._main import main

sys.exit(main())
