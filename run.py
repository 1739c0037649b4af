"""The pyro-stcn command line, run from a checkout: ``python run.py train`` does what
the installed ``pyro-stcn train`` does (:mod:`pyro_stcn.cli`)."""

from pyro_stcn.cli import main

if __name__ == "__main__":
    main()
