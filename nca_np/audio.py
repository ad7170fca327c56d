"""The audio libraries (musdb, museval, soundfile, stempeg) are an extra:
training, the NCA and the report run from a feature cache without them.
Every command that reads or writes audio imports them here, so that a
missing one is said in one line with how to install it."""

from __future__ import annotations

import importlib

from .errors import DataError

#: How to install the audio libraries.
AUDIO_INSTALL = "pip install 'nca_np[audio]' (or make setup)"


class MissingAudioLibrary(DataError):
    """An audio library this command needs is not installed."""


def audio_module(name: str):
    """The audio library ``name`` (e.g. "musdb", "soundfile"), imported; one
    line saying how to install it when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingAudioLibrary(f"{name} is not installed ({exc}); this command reads or writes audio, which "
                                  f"the audio extra provides: {AUDIO_INSTALL}") from None
