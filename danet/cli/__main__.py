"""``python -m danet.cli``, the same as the ``danet`` command."""
from . import main

main()
