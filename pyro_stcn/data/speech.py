"""The built-in speech set: one speaker's real recordings from Debian's
``asterisk-core-sounds-en-wav`` (568 prompts, 8 kHz, 16-bit mono, about 25 minutes):
a small Blizzard-like single-speaker corpus.

Files, not segments, are split (seeded), so that no recording lends neighbouring
segments to both training and test. Frames are FW consecutive samples (default 200).
"""

from pathlib import Path

from pyro_stcn.data.batching import Splits
from pyro_stcn.data.errors import DataError
from pyro_stcn.data.wav import load_wav_splits

SPEECH_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
INSTALL = "apt-get install asterisk-core-sounds-en-wav (or point --data-dir at a folder of 16-bit mono wav files)"


def load_speech_splits(fw: int = 200, directory: str | Path | None = None, seed: int = 0) -> Splits:
    """Speech frames ``[steps, fw]`` from the asterisk recordings (or ``directory``)."""
    directory = Path(directory) if directory else SPEECH_DIR
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory; the speech data set needs {INSTALL}")
    return load_wav_splits(directory, fw, seed)
