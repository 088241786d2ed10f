"""``python -m amagi_plugin`` runs the ``amagi`` command line."""

import sys

from amagi_plugin.cli import main

sys.exit(main())
