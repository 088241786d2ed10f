"""``python -m amagi_plugin.cli``: the ``amagi`` command without its console script."""

from amagi_plugin.cli import entry

entry()
