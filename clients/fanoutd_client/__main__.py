"""``python -m fanoutd_client`` is the ``fanout`` tool."""

import sys

from .tool import main

sys.exit(main())
