"""``python -m pyro_stcn`` is the ``pyro-stcn`` command line."""

from pyro_stcn.cli import main

main()
