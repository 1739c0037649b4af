"""The built-in speech set: one speaker's real recordings from Debian's
``asterisk-core-sounds-en-wav`` (568 prompts, 8 kHz, 16-bit mono, about 25 minutes):
a small Blizzard-like single-speaker corpus.

Files, not segments, are split (seeded), so that no recording lends neighbouring
segments to both training and test. Frames are FW consecutive samples (default 200).
"""

from pathlib import Path

import torch

from pyro_stcn.data.batching import Splits
from pyro_stcn.data.errors import DataError
from pyro_stcn.data.wav import load_wav_files, wav_paths

SPEECH_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
INSTALL = "apt-get install asterisk-core-sounds-en-wav (or point --data-dir at a folder of 16-bit mono wav files)"
HELD_OUT = 0.1  # of the files, each for validation and test


def load_speech_splits(fw: int = 200, directory: str | Path | None = None, seed: int = 0) -> Splits:
    """Speech frames ``[steps, fw]`` from the asterisk recordings (or ``directory``)."""
    directory = Path(directory) if directory else SPEECH_DIR
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory; the speech data set needs {INSTALL}")
    paths = wav_paths(directory)
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()
    held = max(1, int(HELD_OUT * len(paths)))
    if len(paths) < 3:
        raise DataError(f"{directory}: {len(paths)} wav files; a train/validation/test split needs at least 3")
    valid, test, train = order[:held], order[held : 2 * held], order[2 * held :]
    split = {name: load_wav_files([paths[i] for i in sorted(idx)], fw) for name, idx in
             (("train", train), ("valid", valid), ("test", test))}  # fmt: skip
    return Splits(split["train"], split["valid"], split["test"], likelihood="gmm")
