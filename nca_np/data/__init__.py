"""Data: MUSDB18 on disk, the test excerpts, and the feature cache.

- :mod:`.musdb_io` finds, validates and reads MUSDB18 (stems or wav) tracks.
- :mod:`.excerpts` chooses the 30 s test excerpts (SiSEC 2018 list or
  activation confidence).
- :mod:`.cache` turns the dataset into magnitude features once
  (:func:`prepare_cache`) and serves them (:func:`open_cache`): training
  frames as a frame source (:mod:`nca_np.frames`), test excerpts as NCA
  segments.
- :mod:`.synth` writes the built-in synthetic corpus (imported on its own:
  it needs soundfile).

Importing this package loads neither musdb nor soundfile.
"""

from .cache import (
    FEATURE_FORMAT_VERSION,
    FeatureCache,
    Segment,
    cache_key,
    cache_path,
    find_cache,
    open_cache,
    prepare_cache,
)
from .excerpts import Excerpt, activation_confidence_excerpt, read_cutlist, sisec_previews, write_cutlist
from .musdb_io import LoadedTrack, TrackRef, list_tracks, load_track, resolve_root, scan_tracks

__all__ = [
    "FEATURE_FORMAT_VERSION",
    "Excerpt",
    "FeatureCache",
    "LoadedTrack",
    "Segment",
    "TrackRef",
    "activation_confidence_excerpt",
    "cache_key",
    "cache_path",
    "find_cache",
    "list_tracks",
    "load_track",
    "open_cache",
    "prepare_cache",
    "read_cutlist",
    "resolve_root",
    "scan_tracks",
    "sisec_previews",
    "write_cutlist",
]
