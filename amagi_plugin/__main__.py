"""``python -m amagi_plugin`` runs the ``amagi`` command line."""

from amagi_plugin.cli import entry

entry()
