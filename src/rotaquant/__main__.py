"""``python -m rotaquant`` is the ``rotaquant`` command."""

import sys

from .cli import main

sys.exit(main())
