"""``python -m sharpattn.reid [train|eval] ...``: see ``sharpattn.reid.cli``."""

import sys

from .cli import main

sys.exit(main())
