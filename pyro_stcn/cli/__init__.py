"""pyro-stcn command line: train, evaluate and sample STCN models.

    pyro-stcn train                       # STCN-dense + ladder guide on binarised digits
    pyro-stcn evaluate --run runs/NAME    # test -ELBO and per-layer KL
    pyro-stcn evaluate --run runs/NAME --iw 1000   # and the importance-weighted bound, per step
    pyro-stcn sample --run runs/NAME      # a PNG of generated sequences
    pyro-stcn sample --run runs/NAME --prime 20   # continuations of real test sequences
    pyro-stcn reconstruct --run runs/NAME # test sequences beside their reconstructions
    pyro-stcn ppc --run runs/NAME         # posterior predictive checks
    pyro-stcn bench                       # cached vs uncached generation time
    pyro-stcn bench all [--quick]         # step ratios to hand-written PyTorch, scaling in T, generation
    pyro-stcn bench authors --authors DIR # the authors' MS-STCN training step (their checkout) beside ours
    pyro-stcn compare --budget 3          # baselines and STCNs, 3 minutes each, one table

``python run.py`` is the same command. ``pyro-stcn COMMAND --help`` lists every option.

This package parses arguments and prints; what it runs is the library: runs
(:mod:`pyro_stcn.runs.api`), the model registry (:mod:`pyro_stcn.runs.registry`), training,
evaluation, generation and plots. Every failure is one ``error: ...`` line on stderr
and an exit code (:func:`main`): 2 for usage errors (a flag, file or field that cannot
be used: ``ValueError``, ``FileNotFoundError``, a run directory in use), 1 for a run
that failed (diverged, or a disk that would not take a write), 128 + N for a run
stopped by signal N (SIGTERM 143, Ctrl-C 130, SIGHUP 129, SIGUSR1 138, SIGUSR2 140)
after saving where to resume from.
"""

import argparse
import signal
import sys

from pyro_stcn.cli.bench import add_bench
from pyro_stcn.cli.compare import add_compare
from pyro_stcn.cli.options import flag
from pyro_stcn.cli.results import add_run_commands
from pyro_stcn.cli.train import add_train_flags, cmd_train, settings_of
from pyro_stcn.errors import SettingError
from pyro_stcn.training import Diverged, Interrupted, distributed


def parser() -> argparse.ArgumentParser:
    """The command line; its model and guide choices are those registered now."""
    p = argparse.ArgumentParser(prog="pyro-stcn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model by SVI")
    add_train_flags(t)
    t.set_defaults(func=cmd_train)
    b = add_bench(sub)
    for sp in (t, *add_run_commands(sub), b, add_compare(sub)):
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


USAGE, FAILED = 2, 1  # exit codes: a flag, file or field that cannot be used; a run that failed


def main(argv: list[str] | None = None) -> None:
    """Run a command; a failure is one line on stderr and an exit code (see the module's docstring)."""
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except Interrupted as e:
        leave(str(e), 128 + e.signum, say=e.main)
    except SettingError as e:  # the library's words for its settings, the command line's flags here
        leave(f"error: {e.text(flag)}", USAGE)
    except (ValueError, FileNotFoundError) as e:
        leave(f"error: {e}", USAGE)
    except (Diverged, OSError) as e:  # OSError: a full disk, a file that vanished, ...
        leave(f"error: {e}", FAILED)
    except KeyboardInterrupt:  # Ctrl-C before training started, or a second one
        leave("interrupted", 128 + signal.SIGINT)


def leave(message: str, code: int, say: bool = True) -> None:
    """Exit with ``code`` after printing ``message`` on stderr (unless not ``say``; rank 0
    alone while this process is in a torchrun group)."""
    if say and distributed.is_main():
        try:
            print(message, file=sys.stderr, flush=True)
        except OSError:  # no terminal left to print on (it hung up: SIGHUP); the exit code still says why
            pass
    exit_ = SystemExit(message)  # the message, for callers that catch it (the tests)
    exit_.code = code
    raise exit_

__all__ = ["main", "parser", "settings_of"]
