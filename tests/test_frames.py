"""Frame sources: coverage, determinism, bounded memory, scaling, device storage."""

import numpy
import pytest

from nca_np import backend
from nca_np.frames import ArrayFrames, DeviceFrames, choose_frame_source, device_bytes, epoch_order
from strict_xp import StrictArray, strict

F = 6


def numbered_frames(lengths, seed=0):
    """Pieces whose column 0 is the global row number (so rows can be traced) and vocals = mixture / 2."""
    rng = numpy.random.default_rng(seed)
    mixture, start = [], 0
    for length in lengths:
        piece = rng.random((length, F), dtype=numpy.float32) + 0.5
        piece[:, 0] = numpy.arange(start, start + length)
        mixture.append(piece)
        start += length
    return mixture, [piece / 2 for piece in mixture]


def epoch(source, batch_size, seed):
    batches = list(source.batches(batch_size, backend.rng(seed)))
    return batches, numpy.concatenate([x for x, _ in batches]), numpy.concatenate([y for _, y in batches])


class CountingRows:
    """A read-only (N, F) array that records how many rows each read takes."""

    def __init__(self, array):
        self._array, self.shape, self.reads = array, array.shape, []

    def __getitem__(self, key):
        part = self._array[key]
        self.reads.append(part.shape[0])
        return part


# --- the epoch ---------------------------------------------------------------------------------

@pytest.mark.parametrize("block_frames, blocks_in_memory", [(7, 2), (4096, 16), (1, 1)])
def test_every_frame_exactly_once_with_pairs_kept(block_frames, blocks_in_memory):
    mixture, vocals = numbered_frames([30, 11, 24])
    source = ArrayFrames(mixture, vocals, block_frames=block_frames, blocks_in_memory=blocks_in_memory)
    assert source.n_frames == 65 and source.n_freq == F
    batches, X, Y = epoch(source, 8, seed=3)
    assert [x.shape[0] for x, _ in batches] == [8] * 8 + [1]  # only the last batch is partial
    assert all(x.dtype == numpy.float32 and y.dtype == numpy.float32 for x, y in batches)
    assert sorted(X[:, 0].astype(int)) == list(range(65))
    numpy.testing.assert_array_equal(Y, X / 2)
    numpy.testing.assert_array_equal(X, numpy.concatenate(mixture)[X[:, 0].astype(int)])


def test_same_rng_same_batches_other_rng_other_order():
    mixture, vocals = numbered_frames([40, 25])
    source = ArrayFrames(mixture, vocals, block_frames=5, blocks_in_memory=3)
    _, first, _ = epoch(source, 16, seed=1)
    _, again, _ = epoch(source, 16, seed=1)
    _, other, _ = epoch(source, 16, seed=2)
    numpy.testing.assert_array_equal(first, again)
    assert not numpy.array_equal(first[:, 0], other[:, 0])
    assert not numpy.array_equal(first[:, 0], numpy.arange(65))


def test_generator_is_consumed_deterministically():
    """After an epoch the rng is in the same state whatever the batch size (for resumable training)."""
    mixture, vocals = numbered_frames([50])
    source = ArrayFrames(mixture, vocals, block_frames=8, blocks_in_memory=2)
    states = []
    for batch_size in (1, 7, 64):
        rng = backend.rng(5)
        for _ in source.batches(batch_size, rng):
            pass
        states.append(rng.bit_generator.state["state"]["state"])
    assert states[0] == states[1] == states[2]


def test_chunked_shuffle_mixes_only_blocks_of_one_group():
    """The documented approximation: a group's frames come from blocks_in_memory blocks."""
    mixture, vocals = numbered_frames([100])
    _, X, _ = epoch(ArrayFrames(mixture, vocals, block_frames=10, blocks_in_memory=2), 20, seed=0)
    blocks_per_group = [set(X[start : start + 20, 0].astype(int) // 10) for start in range(0, 100, 20)]
    assert all(len(blocks) == 2 for blocks in blocks_per_group)
    assert set().union(*blocks_per_group) == set(range(10))


def test_small_sets_get_an_exact_global_shuffle():
    """With one group, every frame is equally likely at every position."""
    mixture, vocals = numbered_frames([3, 3])
    source = ArrayFrames(mixture, vocals, block_frames=2, blocks_in_memory=3)
    rng = backend.rng(0)
    first = [int(next(source.batches(6, rng))[0][0, 0]) for _ in range(3000)]
    counts = numpy.bincount(first, minlength=6)
    assert counts.sum() == 3000 and numpy.all(numpy.abs(counts - 500) < 5 * numpy.sqrt(500 * 5 / 6))


def test_epoch_order_is_the_concatenation_of_the_batches():
    mixture, vocals = numbered_frames([17, 9, 30])
    _, X, _ = epoch(ArrayFrames(mixture, vocals, block_frames=4, blocks_in_memory=3), 5, seed=9)
    order = epoch_order([17, 9, 30], 4, 3, backend.rng(9))
    assert order.dtype == numpy.int64
    numpy.testing.assert_array_equal(order, X[:, 0].astype(int))


# --- memory and scaling ----------------------------------------------------------------------------

def test_memmap_larger_than_a_group_is_read_a_block_at_a_time(tmp_path):
    path = tmp_path / "frames.npy"
    numpy.save(path, numbered_frames([1000])[0][0])
    mixture = CountingRows(numpy.load(path, mmap_mode="r"))
    vocals = CountingRows(numpy.load(path, mmap_mode="r"))
    source = ArrayFrames(mixture, vocals, block_frames=50, blocks_in_memory=4)
    yielded = 0
    for x, _ in source.batches(32, backend.rng(0)):
        yielded += x.shape[0]
        in_memory = sum(mixture.reads) - yielded
        assert in_memory <= 50 * 4  # never more than one group of the 1000 rows
    assert yielded == 1000 and sum(mixture.reads) == 1000 and sum(vocals.reads) == 1000
    assert max(mixture.reads) == 50


def test_scale_multiplies_every_band():
    mixture, vocals = numbered_frames([40])
    scale = numpy.linspace(0.5, 3.0, F).astype(numpy.float32)
    _, plain, plain_vocals = epoch(ArrayFrames(mixture, vocals, block_frames=8), 10, seed=4)
    _, scaled, scaled_vocals = epoch(ArrayFrames(mixture, vocals, scale=scale, block_frames=8), 10, seed=4)
    assert scaled.dtype == numpy.float32
    numpy.testing.assert_array_equal(scaled, plain * scale)
    numpy.testing.assert_array_equal(scaled_vocals, plain_vocals * scale)


def test_batches_move_to_the_module():
    mixture, vocals = numbered_frames([20])
    scale = numpy.full(F, 2.0, dtype=numpy.float32)
    source = ArrayFrames(mixture, vocals, scale=scale, module=strict, block_frames=8)
    batches = list(source.batches(6, backend.rng(0)))
    assert all(isinstance(x, StrictArray) and isinstance(y, StrictArray) for x, y in batches)
    X = numpy.concatenate([backend.to_host(x) for x, _ in batches])
    assert X.dtype == numpy.float32
    numpy.testing.assert_array_equal(numpy.sort(X[:, 1]), numpy.sort(mixture[0][:, 1] * 2))


# --- device-held frames -------------------------------------------------------------------------------

def test_device_frames_in_float16_return_float32_within_rounding():
    mixture, vocals = numbered_frames([70, 33])
    mixture[0][:, 1] = 1e-6  # below float16's normal range: kept to an absolute 6e-8
    scale = numpy.linspace(0.25, 4.0, F).astype(numpy.float32)
    host = ArrayFrames(mixture, vocals, scale=scale, block_frames=16, blocks_in_memory=2)
    device = DeviceFrames(mixture, vocals, scale=scale, module=numpy, storage_dtype="float16",
                          block_frames=16, blocks_in_memory=2)
    assert device.n_frames == 103 and device.n_freq == F and device.nbytes == 2 * 103 * F * 2
    for (x, y), (x16, y16) in zip(host.batches(10, backend.rng(2)), device.batches(10, backend.rng(2))):
        assert x16.dtype == numpy.float32 and y16.dtype == numpy.float32 and x16.shape == x.shape
        numpy.testing.assert_allclose(x16, x, rtol=2.0**-11, atol=6e-8)
        numpy.testing.assert_allclose(y16, y, rtol=2.0**-11, atol=6e-8)


def test_device_frames_in_float32_match_array_frames_exactly():
    mixture, vocals = numbered_frames([45, 20])
    scale = numpy.linspace(1.0, 2.0, F).astype(numpy.float32)
    host = ArrayFrames(mixture, vocals, scale=scale, block_frames=8, blocks_in_memory=3)
    device = DeviceFrames(mixture, vocals, scale=scale, module=strict, storage_dtype="float32",
                          block_frames=8, blocks_in_memory=3)
    pairs = list(zip(host.batches(7, backend.rng(8)), device.batches(7, backend.rng(8))))
    assert len(pairs) == 10
    for (x, y), (dx, dy) in pairs:
        assert isinstance(dx, StrictArray)
        numpy.testing.assert_array_equal(backend.to_host(dx), x)
        numpy.testing.assert_array_equal(backend.to_host(dy), y)


def test_device_frames_fill_block_by_block():
    mixture, vocals = numbered_frames([100])
    counting = CountingRows(mixture[0])
    DeviceFrames([counting], vocals, module=numpy, block_frames=16)
    assert sum(counting.reads) == 100 and max(counting.reads) == 16


def test_float16_overflow_is_refused():
    mixture, vocals = numbered_frames([10])
    with pytest.raises(ValueError, match="beyond float16's range .*storage_dtype='float32'"):
        DeviceFrames(mixture, vocals, scale=numpy.full(F, 1e5, dtype=numpy.float32), module=numpy)


def test_choose_frame_source_by_module_and_budget():
    mixture, vocals = numbered_frames([50])
    needed = device_bytes(50, F, "float16")
    assert needed == 2 * 50 * F * 2
    assert type(choose_frame_source(mixture, vocals, module=numpy, device_budget_bytes=10**9)) is ArrayFrames
    assert type(choose_frame_source(mixture, vocals, module=None, device_budget_bytes=10**9)) is ArrayFrames
    fits = choose_frame_source(mixture, vocals, module=strict, device_budget_bytes=needed)
    assert type(fits) is DeviceFrames
    streamed = choose_frame_source(mixture, vocals, module=strict, device_budget_bytes=needed - 1)
    assert type(streamed) is ArrayFrames
    x, _ = next(streamed.batches(4, backend.rng(0)))
    assert isinstance(x, StrictArray)


# --- bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mixture, vocals, message", [
    ([numpy.zeros((4, F))], [numpy.zeros((5, F))], r"mixture \(4, 6\) and vocals \(5, 6\) differ"),
    ([numpy.zeros((4, F)), numpy.zeros((4, F + 1))], [numpy.zeros((4, F)), numpy.zeros((4, F + 1))],
     "array 1 has 7 bins, array 0 has 6"),
    (numpy.zeros(4), numpy.zeros(4), r"frames as rows \(N, F\), got shape \(4,\)"),
    ([], [], "empty list"),
    ([numpy.zeros((4, F))], [numpy.zeros((4, F))] * 2, "1 mixture arrays but 2 vocals arrays"),
])
def test_bad_arrays_are_named(mixture, vocals, message):
    with pytest.raises(ValueError, match=message):
        ArrayFrames(mixture, vocals)


def test_bad_settings_are_named():
    mixture, vocals = numbered_frames([10])
    with pytest.raises(ValueError, match=r"scale must have shape \(6,\)"):
        ArrayFrames(mixture, vocals, scale=numpy.ones(5))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        next(ArrayFrames(mixture, vocals).batches(0, backend.rng(0)))
    with pytest.raises(ValueError, match="storage_dtype must be one of float16, float32"):
        DeviceFrames(mixture, vocals, module=numpy, storage_dtype="bfloat16")


def test_npy_rows_reads_what_numpy_saved(tmp_path):
    from nca_np.frames import NpyRows
    data = numpy.arange(60, dtype=numpy.float32).reshape(12, 5)
    numpy.save(tmp_path / "a.npy", data)
    rows = NpyRows(tmp_path / "a.npy")
    assert rows.shape == (12, 5) and rows.dtype == numpy.float32 and len(rows) == 12
    numpy.testing.assert_array_equal(rows[3:7], data[3:7])
    numpy.testing.assert_array_equal(rows[10:99], data[10:])
    numpy.testing.assert_array_equal(numpy.asarray(rows), data)
    out = numpy.empty((4, 5), dtype=numpy.float32)
    numpy.testing.assert_array_equal(rows.read_into(8, out), data[8:])
    with pytest.raises(ValueError, match="step must be 1"):
        rows[::2]
    with pytest.raises(OSError, match="file ends before row 13"):
        rows.read_into(9, out)
    source = ArrayFrames([rows], [NpyRows(tmp_path / "a.npy")], block_frames=5, blocks_in_memory=1)
    seen = numpy.concatenate([X for X, _ in source.batches(4, numpy.random.default_rng(0))])
    numpy.testing.assert_array_equal(numpy.sort(seen[:, 0]), data[:, 0])
