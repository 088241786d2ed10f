"""``python -m amagi_plugin.cli``: the ``amagi`` command without its console script."""

import sys

from amagi_plugin.cli import exit_with, main

exit_with(main(sys.argv[1:]))
