"""``python -m amagi_plugin.cli``: the ``amagi`` command without its console script."""

import sys

from amagi_plugin.cli import main

sys.exit(main(sys.argv[1:]))
