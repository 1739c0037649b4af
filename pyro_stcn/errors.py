"""Errors in the library's terms, which the command line puts in its own."""

import re
from collections.abc import Callable


class SettingError(ValueError):
    """A setting that cannot be used. The message names settings as ``<name>``:
    ``str()`` gives the library's words (the name alone, ``z_dims``); :meth:`text`
    renders each name another way, as the command line does with its flags
    (``--z-dims``)."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(self.text())

    def text(self, name: Callable[[str], str] = lambda setting: setting) -> str:
        return re.sub(r"<(\w+)>", lambda match: name(match.group(1)), self.message)
