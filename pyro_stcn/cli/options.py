"""What several commands share: the device, writable paths, argparse types, the data flags."""

import argparse
import os
from pathlib import Path

import torch

from pyro_stcn.data import DATASETS, FORMATS


def flag(setting: str) -> str:
    """The command-line flag of a setting: ``z_dims`` -> ``--z-dims``."""
    return "--" + setting.replace("_", "-")


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def writable(path: Path, flag: str, directory: bool) -> None:
    """Refuse, before anything is written, a path the command could not write: one
    that exists as the other kind (file or directory), lies under a file, or under a
    directory this process may not write to."""
    kind = "a directory" if directory else "a file path"
    if path.exists() and path.is_dir() != directory:
        raise ValueError(f"{flag} {path} is {'a file' if directory else 'a directory'}; expected {kind}")
    parent = path if directory else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is a file, so nothing can be written under it; expected {kind}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {parent} is not writable by this user; expected {kind} that can be written")


def name_list(valid, what: str):
    """An argparse type: comma-separated names from ``valid``, repeats dropped."""

    def parse(text: str) -> list[str]:
        names = list(dict.fromkeys(text.split(",")))
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown[0]!r}; valid: {', '.join(valid)}")
        return names

    return parse


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 1,2,2, got {text!r}") from None


def positive_ints(text: str) -> list[int]:
    """An argparse type: comma-separated positive integers."""
    values = int_list(text)
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def positive_int(text: str) -> int:
    """An argparse type: one positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", choices=[*DATASETS, *FORMATS], help="a built-in data set (default digits) or a format")
    p.add_argument("--data-dir", help="where your files are (a directory; for npz, the file)")
    p.add_argument("--fw", type=int, help="speech, wav: frame width, samples per step (default 200)")
