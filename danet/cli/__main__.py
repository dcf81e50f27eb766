"""``python -m danet.cli``, the same as the ``danet`` command."""
from danet.cli import main

main()
