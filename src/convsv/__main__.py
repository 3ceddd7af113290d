"""``python -m convsv``: the command line."""

import sys

from .cli import main

sys.exit(main())
