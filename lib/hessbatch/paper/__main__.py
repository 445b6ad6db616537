"""``python -m hessbatch.paper``: the ``hessbatch`` command."""

import sys

from .cli import main

sys.exit(main())
