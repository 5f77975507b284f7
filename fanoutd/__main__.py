"""``python -m fanoutd``: the same entry point as the ``fanoutd`` script."""

import sys

from .cli import main

sys.exit(main())
