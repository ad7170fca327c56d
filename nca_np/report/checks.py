"""The report's input checks: every array and setting is checked, and
device arrays copied to the host, before the first file is written.

Matrices follow the paper: rows are output frequencies, columns input
frequencies (``C x`` maps an input frame to an output frame).
"""

from __future__ import annotations

import json
import numbers

import numpy

from .. import backend
from ..nca import get_strategy, strategy_names
from .tables import ReportError


def check_spectral_settings(sample_rate, n_fft) -> None:
    if not (isinstance(sample_rate, numbers.Real) and sample_rate > 0):
        raise ReportError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
    if not (isinstance(n_fft, numbers.Integral) and n_fft > 0):
        raise ReportError(f"n_fft must be a positive integer, got {n_fft!r}")


def host_matrix(array, what: str, *, ndim: int = 2) -> numpy.ndarray:
    """A host NumPy array (device arrays are copied back), shape-checked."""
    host = backend.to_host(array) if backend.array_module(array) is not numpy else numpy.asarray(array)
    if host.ndim != ndim:
        raise ReportError(f"{what} must be {ndim}-D, got shape {tuple(host.shape)}")
    return host


def check_linear_compositions(linear_compositions: dict, kinds) -> dict:
    """``{kind: (F, F) host array}`` of the kinds given, F >= 2 checked."""
    checked = {}
    for kind in kinds:
        if kind in linear_compositions:
            matrix = host_matrix(linear_compositions[kind], f"linear composition of {kind}")
            if matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
                raise ReportError(f"linear composition of {kind} must be square (F, F) with F >= 2, "
                                  f"got shape {matrix.shape}")
            checked[kind] = matrix
    return checked


def _check_figure_entry(kind: str, entry: dict, strategies) -> dict:
    """The host arrays Figure 3 draws of one model: ``target`` (F, T) and
    each strategy's ``matrix_key`` (F, F) for the strategies given, where present."""
    arrays = {}
    # the mixture and the true vocals travel with the entry but are not drawn
    if "target" in entry:
        arrays["target"] = host_matrix(entry["target"], f"figure_segment[{kind!r}]['target']")
    for strategy in strategies:
        key = get_strategy(strategy).matrix_key
        if key in entry:
            arrays[key] = host_matrix(entry[key], f"figure_segment[{kind!r}][{key!r}]")
            n_freq = arrays[key].shape[0]
            if arrays[key].shape != (n_freq, n_freq):
                raise ReportError(f"figure_segment[{kind!r}][{key!r}] must be square (F, F), "
                                  f"got shape {arrays[key].shape}")
            if "target" in arrays and arrays["target"].shape[0] != n_freq:
                raise ReportError(f"figure_segment[{kind!r}]: target has {arrays['target'].shape[0]} bins "
                                  f"but {key} is {arrays[key].shape}: both must use the same F")
    return arrays


def check_figure_segment(figure_segment, kinds, strategies) -> dict:
    """Figure 3's segment as :func:`nca_np.report.figures.plot_couplings` draws it:
    ``{kind: _check_figure_entry(…)}`` for every kind, with the ``track``
    and ``segment_index`` given."""
    figure_segment = figure_segment or {}
    checked = {key: figure_segment[key] for key in ("track", "segment_index") if key in figure_segment}
    for kind in kinds:
        checked[kind] = _check_figure_entry(kind, figure_segment.get(kind, {}), strategies)
    return checked


def check_metadata(metadata) -> dict:
    """A copy of ``metadata`` (``None`` → empty), checked to be JSON-able."""
    metadata = dict(metadata or {})
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise ReportError(f"metadata cannot be written as JSON: {exc}") from None
    return metadata


def frequency_bins(linear_compositions: dict, figure_segment: dict, kinds) -> int | None:
    """F, read from the first matrix drawn (None when there is none).

    Args:
        linear_compositions, figure_segment: as the checks above return them.
    """
    for kind in kinds:
        if kind in linear_compositions:
            return linear_compositions[kind].shape[0]
        entry = figure_segment[kind]
        for key in [get_strategy(name).matrix_key for name in strategy_names()] + ["target"]:
            if key in entry:
                return entry[key].shape[0]
    return None
