"""Tests of nca_np.data.excerpts: the SiSEC list, the activation-confidence
selector (docs/method.md#protocol) and the cut-list file."""

import numpy
import pytest

from nca_np.data import excerpts
from nca_np.data.excerpts import Excerpt
from nca_np.errors import DataError

RATE = 44100


def test_shipped_previews_have_144_tracks_and_all_50_test_tracks():
    previews = excerpts.sisec_previews()
    assert len(previews) == 144
    names = list(previews)
    test_tracks = names[94:]
    assert len(test_tracks) == 50
    assert test_tracks[0] == "AM Contra - Heart Peripheral" and test_tracks[-1] == "Zeno - Signs"
    assert all(previews[name][1] - previews[name][0] == 30.0 for name in names)
    assert previews["AM Contra - Heart Peripheral"] == (165.0, 195.0)
    # A quoted name with a comma survives.
    assert previews["Jokers, Jacks & Kings - Sea Of Leaves"] == (149.0, 179.0)


def _stems(seconds, active_all, rng, background_source=None):
    """Four noise stems; all four sound in ``active_all`` (start, end) seconds,
    elsewhere only ``background_source`` (or nothing)."""
    n = int(seconds * RATE)
    time = numpy.arange(n) / RATE
    inside = (time >= active_all[0]) & (time < active_all[1])
    stems = []
    for index in range(4):
        gate = inside | (index == background_source)
        stems.append(0.3 * (2.0 * rng.random((n, 2)) - 1.0) * gate[:, None])
    return stems


@pytest.mark.parametrize("background_source", [None, 0])
def test_selector_finds_the_window_where_all_four_sources_play(background_source):
    stems = _stems(55.0, (14.0, 44.0), numpy.random.default_rng(1), background_source)
    start, end = excerpts.activation_confidence_excerpt(stems, sample_rate=RATE)
    assert abs(start - 14.0) <= 1.0
    assert start == int(start) and end == start + 30.0


def test_selector_is_deterministic():
    stems = _stems(40.0, (6.0, 36.0), numpy.random.default_rng(2), 1)
    first = excerpts.activation_confidence_excerpt(stems)
    assert excerpts.activation_confidence_excerpt([stem.copy() for stem in stems]) == first


def test_short_track_is_used_whole():
    stems = [numpy.ones((RATE * 20, 2)) * 0.1 for _ in range(4)]
    assert excerpts.activation_confidence_excerpt(stems, sample_rate=RATE) == (0.0, 20.0)


def test_selector_rejects_sources_of_different_lengths():
    with pytest.raises(ValueError, match="same number of samples"):
        excerpts.activation_confidence(
            [numpy.zeros(RATE * 2), numpy.zeros(RATE * 2 + 1)]
        )


def test_activity_of_a_constant_signal_by_hand():
    # hann(4098) without end points sums to 2048.5, each half to 1024.25.
    value = 0.25
    activity = excerpts.activity_envelope(numpy.full(3 * 4096, value))
    assert activity.shape == (7,)  # padded to 16384 samples: 1 + (16384 - 4096) / 2048 frames
    full = numpy.sqrt(value) * 2048.5 / 4096
    half = numpy.sqrt(value) * 1024.25 / 4096
    numpy.testing.assert_allclose(activity, [half, full, full, full, full, full, half], rtol=1e-12)
    # Negative samples are rectified away before the square root.
    numpy.testing.assert_array_equal(excerpts.activity_envelope(numpy.full(3 * 4096, -value)), numpy.zeros(7))


def test_confidence_of_silence_and_of_full_activity():
    silent = excerpts.activation_confidence([numpy.zeros(RATE * 2)] * 4)
    # H = 0 everywhere: each source contributes 1 - 1/(1 + exp(-3)).
    numpy.testing.assert_allclose(silent, 4 * (1 - 1 / (1 + numpy.exp(-3.0))), rtol=1e-12)
    loud = excerpts.activation_confidence([numpy.full(RATE * 8, 0.25)] * 4)
    # Interior frames (away from the low-pass's edge ringing): H normalised to
    # 1 per source, confidence 1 - 1/(1 + exp(17)) each.
    numpy.testing.assert_allclose(loud[60:-60], 4 * (1 - 1 / (1 + numpy.exp(17.0))), rtol=0, atol=1e-9)
    assert loud[0] < loud[60]  # the half-empty first frame is less active


def test_cutlist_round_trip(tmp_path):
    items = [
        Excerpt("Synth 001 - Test", 3.0, 33.0, "activation-confidence"),
        Excerpt("Jokers, Jacks & Kings - Sea Of Leaves", 149.0, 179.0, "sisec2018"),
        Excerpt("Short One", 0.0, 12.345678901, "whole-track"),
    ]
    path = excerpts.write_cutlist(tmp_path / "cut" / "cutlist.csv", items)
    assert path.read_text().splitlines()[0] == "track,start_s,end_s,source"
    assert [p.name for p in path.parent.iterdir()] == ["cutlist.csv"]
    assert excerpts.read_cutlist(path) == items


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "expected header"),
        ("name,start,end,source\n", "expected header"),
        ("track,start_s,end_s,source\nA,1.0,31.0\n", "line 2: expected 4 columns"),
        ("track,start_s,end_s,source\nA,one,31.0,sisec2018\n", "line 2"),
        ("track,start_s,end_s,source\nA,1.0,31.0,guess\n", "unknown source"),
        ("track,start_s,end_s,source\nA,31.0,1.0,sisec2018\n", "start_s < end_s"),
        ("track,start_s,end_s,source\nA,1,31,sisec2018\nA,2,32,sisec2018\n", "appears twice"),
    ],
)
def test_malformed_cutlist_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "cutlist.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        excerpts.read_cutlist(path)


def test_missing_cutlist_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        excerpts.read_cutlist(tmp_path / "nope.csv")
