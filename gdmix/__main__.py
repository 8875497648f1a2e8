"""``python -m gdmix``: the same as the ``gdmix`` command (used to start workers)."""

import sys

from gdmix.cli import main

sys.exit(main())
