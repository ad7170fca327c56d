"""Frame sources: the training set as shuffled batches of frames.

A *frame source* is what the trainer draws from. It offers

- ``n_frames``: the number of training frames N,
- ``n_freq``: the number of frequency bins F,
- ``batches(batch_size, rng)``: an iterator of ``(X, Y)``, both ``(B, F)``
  float32 arrays of the source's array module (frames as rows), the scaled
  mixture and vocals magnitudes (docs/method.md#features). One call is one epoch: every
  frame appears exactly once, in a shuffled order that depends only on
  ``rng`` (a ``numpy.random.Generator``, consumed deterministically), and
  the last batch holds the remaining ``N mod B`` frames when that is not 0.

The order is a *chunked shuffle* (:func:`epoch_groups`): the frames are cut
into blocks of ``block_frames`` consecutive frames (never crossing from one
track's array into the next), the blocks are shuffled, taken
``blocks_in_memory`` at a time, and the frames of each such group are
shuffled among themselves. A batch therefore mixes frames of up to
``blocks_in_memory`` random places of the training set but never of the
whole set at once: an approximation of a global shuffle that lets
:class:`ArrayFrames` read the disk in long sequential runs and hold only one
group in memory (the full MUSDB18 training set is about 22 GB of float32).
When all frames fit in one group (``N <= block_frames * blocks_in_memory``)
the order is an exact uniformly random permutation.

Both sources use the same order for the same data, block settings and
``rng``, so a run draws the same batches from disk (:class:`ArrayFrames`)
as from device memory (:class:`DeviceFrames`).
"""

from __future__ import annotations

import numpy

from . import backend
from .kernels import gather_rows

DEFAULT_BLOCK_FRAMES = 4096
DEFAULT_BLOCKS_IN_MEMORY = 16
_STORAGE_DTYPES = ("float16", "float32")
_FLOAT16_MAX = float(numpy.finfo(numpy.float16).max)


class NpyRows:
    """The rows of a 2-D ``.npy`` file, read from disk on demand.

    Slicing reads the rows with ordinary file reads into a new array. A
    memory map would do the same work, but every page it touches stays in
    the process's resident memory until the map is closed, so one epoch over
    a cache larger than memory would appear to need all of it; file reads go
    through the operating system's page cache, which it can drop at will.

    Attributes:
        path: the file.
        shape: ``(N, F)``.
        dtype: the stored dtype.
    """

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as handle:
            version = numpy.lib.format.read_magic(handle)
            readers = {(1, 0): numpy.lib.format.read_array_header_1_0,
                       (2, 0): numpy.lib.format.read_array_header_2_0}
            if version not in readers:
                raise ValueError(f"{path}: .npy format {version} is not supported (1.0 and 2.0 are)")
            shape, fortran_order, self.dtype = readers[version](handle)
            self._offset = handle.tell()
        if len(shape) != 2 or fortran_order:
            raise ValueError(f"{path}: expected a C-ordered 2-D array, got shape {shape}")
        self.shape = tuple(shape)
        self._row_bytes = self.shape[1] * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> numpy.ndarray:
        """Rows ``[start, stop)`` as a new ``(stop − start, F)`` array."""
        if not isinstance(rows, slice):
            raise TypeError("NpyRows reads contiguous row ranges: index it with a slice")
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("NpyRows reads contiguous row ranges: the step must be 1")
        return self.read_into(start, numpy.empty((max(stop - start, 0), self.shape[1]), dtype=self.dtype))

    def read_into(self, start: int, out: numpy.ndarray) -> numpy.ndarray:
        """Read rows ``[start, start + len(out))`` into ``out``, a C-contiguous
        array of this file's dtype and width (no intermediate copy)."""
        if out.dtype != self.dtype or out.shape[1:] != self.shape[1:] or not out.flags.c_contiguous:
            raise ValueError(f"read_into needs a C-contiguous (n, {self.shape[1]}) {self.dtype} array")
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(self._offset + start * self._row_bytes)
            if handle.readinto(memoryview(out).cast("B")) != out.nbytes:
                raise OSError(f"{self.path}: file ends before row {start + len(out)}; the cache is damaged")
        return out

    def __array__(self, dtype=None, copy=None):
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)


def _as_pieces(arrays, what: str) -> list:
    """One array or a list of arrays (one per track) as a list of 2-D pieces."""
    pieces = list(arrays) if isinstance(arrays, (list, tuple)) else [arrays]
    if not pieces:
        raise ValueError(f"{what}: got an empty list of arrays")
    for number, piece in enumerate(pieces):
        shape = tuple(piece.shape)
        if len(shape) != 2:
            raise ValueError(f"{what}[{number}] must be frames as rows (N, F), got shape {shape}")
    return pieces


def _check_pairs(mixture, vocals) -> tuple[list, list, int]:
    """Validate matching mixture/vocals pieces; return them and F."""
    mixture = _as_pieces(mixture, "mixture")
    vocals = _as_pieces(vocals, "vocals")
    if len(mixture) != len(vocals):
        raise ValueError(f"got {len(mixture)} mixture arrays but {len(vocals)} vocals arrays")
    n_freq = mixture[0].shape[1]
    for number, (mix, voc) in enumerate(zip(mixture, vocals)):
        if tuple(mix.shape) != tuple(voc.shape):
            raise ValueError(f"array {number}: mixture {tuple(mix.shape)} and vocals {tuple(voc.shape)} "
                             "differ in shape")
        if mix.shape[1] != n_freq:
            raise ValueError(f"array {number} has {mix.shape[1]} bins, array 0 has {n_freq}")
    if sum(piece.shape[0] for piece in mixture) == 0:
        raise ValueError("the frame arrays hold no frames")
    return mixture, vocals, n_freq


def _host_scale(scale, n_freq: int) -> numpy.ndarray | None:
    """``scale`` as a host ``(F,)`` float32 array (or None)."""
    if scale is None:
        return None
    scale = numpy.asarray(backend.to_host(scale), dtype=numpy.float32)
    if scale.shape != (n_freq,):
        raise ValueError(f"scale must have shape ({n_freq},), one factor per band; got {scale.shape}")
    return scale


def _check_block_settings(block_frames: int, blocks_in_memory: int) -> None:
    if block_frames < 1 or blocks_in_memory < 1:
        raise ValueError(
            f"block_frames ({block_frames}) and blocks_in_memory ({blocks_in_memory}) must be at least 1"
        )


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, numpy.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def make_blocks(piece_lengths, block_frames: int) -> list[tuple[int, int, int]]:
    """Cut each piece into blocks of at most ``block_frames`` consecutive frames.

    Args:
        piece_lengths: number of frames of each piece (track), in order.
        block_frames: frames per block; a piece's last block may be shorter.

    Returns:
        ``[(piece, start, stop), ...]`` in reading order; rows
        ``start:stop`` of piece ``piece``.
    """
    blocks = []
    for piece, length in enumerate(piece_lengths):
        for start in range(0, length, block_frames):
            blocks.append((piece, start, min(start + block_frames, length)))
    return blocks


def epoch_groups(blocks, blocks_in_memory: int, rng: numpy.random.Generator):
    """The chunked shuffle of one epoch, group by group.

    Draws one permutation of the blocks, then, for each group of
    ``blocks_in_memory`` consecutive blocks of it, one permutation of the
    group's frames. The draws are made lazily, group by group, always in the
    same sequence, so the same ``rng`` state gives the same epoch.

    Args:
        blocks: the list from :func:`make_blocks`.
        blocks_in_memory: blocks per group.
        rng: the generator that decides the order.

    Yields:
        ``(group_blocks, order)``: the group's blocks, in the order their
        frames are stacked, and ``order`` an ``(M,)`` int64 permutation of
        the ``M`` stacked frames (row ``order[i]`` of the stack is the
        group's ``i``-th frame of the epoch).
    """
    block_order = rng.permutation(len(blocks))
    for first in range(0, len(blocks), blocks_in_memory):
        group = [blocks[index] for index in block_order[first : first + blocks_in_memory]]
        n_group_frames = sum(stop - start for _, start, stop in group)
        yield group, rng.permutation(n_group_frames)


class ArrayFrames:
    """Frames streamed from host arrays (often memory-mapped ``.npy`` files).

    Holds at most one group of ``block_frames * blocks_in_memory`` frames
    (plus one batch) in memory; see the module docstring for the chunked
    shuffle and why it approximates a global one.

    Args:
        mixture: ``(N, F)`` host array, or a list of ``(N_i, F)`` arrays (one
            per track: no concatenation of the whole set is needed). Any
            object with ``.shape`` and row slicing works, e.g.
            ``numpy.load(path, mmap_mode="r")``.
        vocals: the vocals frames, same shapes as ``mixture``.
        scale: ``(F,)`` per-band factor multiplied into every batch (``1/std``
            of the Scaler, docs/method.md#features), or None for frames already scaled.
        module: array module the batches are moved to
            (``backend.to_device``); None keeps them on the host.
        block_frames: frames per block (consecutive frames read together).
        blocks_in_memory: blocks per group (the memory bound).
    """

    def __init__(self, mixture, vocals, *, scale=None, module=None,
                 block_frames: int = DEFAULT_BLOCK_FRAMES, blocks_in_memory: int = DEFAULT_BLOCKS_IN_MEMORY):
        _check_block_settings(block_frames, blocks_in_memory)
        self._mixture, self._vocals, self.n_freq = _check_pairs(mixture, vocals)
        self.n_frames = int(sum(piece.shape[0] for piece in self._mixture))
        self._module = module
        self._blocks = make_blocks([piece.shape[0] for piece in self._mixture], block_frames)
        self._blocks_in_memory = blocks_in_memory
        host_scale = _host_scale(scale, self.n_freq)
        self._scale = None if host_scale is None else self._to_module(host_scale)

    def _to_module(self, host_array):
        return host_array if self._module is None else backend.to_device(host_array, self._module)

    def _read_group(self, pieces, group, buffer) -> numpy.ndarray:
        """Stack the group's blocks, read one after the other, into the first
        rows of ``buffer`` (float32, reused from group to group); returns them."""
        stack = buffer[: sum(stop - start for _, start, stop in group)]
        row = 0
        for piece, start, stop in group:
            target = stack[row : row + stop - start]
            source = pieces[piece]
            if isinstance(source, NpyRows) and source.dtype == numpy.float32:
                source.read_into(start, target)
            else:
                target[...] = numpy.asarray(source[start:stop])
            row += stop - start
        return stack

    def batches(self, batch_size: int, rng: numpy.random.Generator):
        """One epoch of ``(X, Y)`` batches, ``(B, F)`` float32 each (see the module docstring).

        Args:
            batch_size: B; the last batch holds ``N mod B`` frames when that is not 0.
            rng: decides the order; consumed group by group as the epoch advances.

        Yields:
            ``(X, Y)``: scaled mixture and vocals frames as rows, in ``module``.
        """
        _check_batch_size(batch_size)
        pending_mixture, pending_vocals, n_pending = [], [], 0
        # One pair of group buffers for the epoch: fresh ones per group would
        # cost the page faults of a new allocation every time.
        largest = sum(sorted((stop - start for _, start, stop in self._blocks), reverse=True)[: self._blocks_in_memory])
        buffers = [numpy.empty((largest, self.n_freq), dtype=numpy.float32) for _ in range(2)]
        for group, order in epoch_groups(self._blocks, self._blocks_in_memory, rng):
            mixture = self._read_group(self._mixture, group, buffers[0])
            vocals = self._read_group(self._vocals, group, buffers[1])
            position = 0
            while position < order.shape[0]:
                take = min(batch_size - n_pending, order.shape[0] - position)
                rows = order[position : position + take]
                # Copies (fancy indexing), so a batch spanning two groups
                # never keeps the previous group alive.
                pending_mixture.append(mixture[rows])
                pending_vocals.append(vocals[rows])
                n_pending, position = n_pending + take, position + take
                if n_pending == batch_size:
                    yield self._finish(pending_mixture), self._finish(pending_vocals)
                    pending_mixture, pending_vocals, n_pending = [], [], 0
            del mixture, vocals  # free this group before the next one is read
        if n_pending:
            yield self._finish(pending_mixture), self._finish(pending_vocals)

    def _finish(self, parts):
        """Join a batch's parts, move it to the module, apply the scale there."""
        host = parts[0] if len(parts) == 1 else numpy.concatenate(parts)
        batch = self._to_module(host)
        return batch if self._scale is None else batch * self._scale


def epoch_order(piece_lengths, block_frames: int, blocks_in_memory: int, rng: numpy.random.Generator) -> numpy.ndarray:
    """The whole epoch's frame order as global row indices.

    Global row ``r`` is row ``r - offset_i`` of piece ``i``, pieces stacked in
    order. The result is the concatenation of :func:`epoch_groups`' orders,
    so ``B`` consecutive entries are exactly the rows of one
    :class:`ArrayFrames` batch for the same ``rng``.

    Returns:
        ``(N,)`` int64 permutation of ``range(N)``.
    """
    lengths = [int(length) for length in piece_lengths]
    offsets = numpy.concatenate([[0], numpy.cumsum(lengths)]).astype(numpy.int64)
    parts = []
    for group, order in epoch_groups(make_blocks(lengths, block_frames), blocks_in_memory, rng):
        stacked = numpy.concatenate([numpy.arange(offsets[piece] + start, offsets[piece] + stop, dtype=numpy.int64)
                                     for piece, start, stop in group])
        parts.append(stacked[order])
    return numpy.concatenate(parts)


def device_bytes(n_frames: int, n_freq: int, storage_dtype: str = "float16") -> int:
    """Bytes that :class:`DeviceFrames` needs for mixture and vocals together."""
    _check_storage_dtype(storage_dtype)
    return 2 * int(n_frames) * int(n_freq) * numpy.dtype(storage_dtype).itemsize


def _check_storage_dtype(storage_dtype: str) -> None:
    if str(storage_dtype) not in _STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {', '.join(_STORAGE_DTYPES)}, got {storage_dtype!r}")


class DeviceFrames:
    """The whole scaled training set held in the memory of an array module.

    Filled block by block from host arrays or memmaps, so the full float32
    set never sits on the host at once. Stored as ``storage_dtype``:
    float16 halves the memory at a relative rounding of at most 2^-11 (and
    an absolute one of about 6e-8 for values below float16's smallest normal
    number, 6.1e-5); batches are cast back to float32 so the loss is always
    computed in float32.

    Batches follow :func:`epoch_order`, drawn on the host from ``rng`` and
    moved to the device once per epoch; each batch is gathered and cast to
    float32 in one pass (one fused kernel on CuPy, :func:`nca_np.kernels.gather_rows`): the same batches as
    :class:`ArrayFrames` with the same data, block settings and ``rng``.

    Args:
        mixture: ``(N, F)`` host array or list of ``(N_i, F)`` arrays (memmaps welcome).
        vocals: the vocals frames, same shapes.
        scale: ``(F,)`` per-band factor (``1/std``) applied before storage, or None.
        module: the array module to hold the frames (None: the active one).
        storage_dtype: "float16" or "float32".
        block_frames, blocks_in_memory: the chunked shuffle's settings.

    Raises:
        ValueError: a scaled value exceeds float16's range (65504) with
            float16 storage; use "float32".
    """

    def __init__(self, mixture, vocals, *, scale=None, module=None, storage_dtype: str = "float16",
                 block_frames: int = DEFAULT_BLOCK_FRAMES, blocks_in_memory: int = DEFAULT_BLOCKS_IN_MEMORY):
        _check_block_settings(block_frames, blocks_in_memory)
        _check_storage_dtype(storage_dtype)
        mixture, vocals, self.n_freq = _check_pairs(mixture, vocals)
        self._lengths = [int(piece.shape[0]) for piece in mixture]
        self.n_frames = int(sum(self._lengths))
        self._module = module if module is not None else backend.xp()
        self._storage_dtype = numpy.dtype(storage_dtype)
        self._block_frames, self._blocks_in_memory = block_frames, blocks_in_memory
        scale = _host_scale(scale, self.n_freq)
        self._mixture = self._fill(mixture, scale, "mixture")
        self._vocals = self._fill(vocals, scale, "vocals")

    #: Every frame lives in the module's memory (recorded as the run's frame source).
    device_resident = True

    @property
    def storage_dtype(self) -> str:
        """"float16" or "float32": the precision the frames are held in."""
        return self._storage_dtype.name

    @property
    def nbytes(self) -> int:
        """Bytes held in the module's memory."""
        return device_bytes(self.n_frames, self.n_freq, self._storage_dtype.name)

    def _fill(self, pieces, scale, what: str):
        """Copy all pieces, scaled and cast on the host one block at a time, into one array."""
        store = self._module.empty((self.n_frames, self.n_freq), dtype=self._storage_dtype)
        row = 0
        for piece in pieces:
            for start in range(0, piece.shape[0], self._block_frames):
                block = numpy.asarray(piece[start : start + self._block_frames], dtype=numpy.float32)
                if scale is not None:
                    block = block * scale
                self._check_range(block, what)
                store[row : row + block.shape[0]] = backend.to_device(block.astype(self._storage_dtype), self._module)
                row += block.shape[0]
        return store

    def _check_range(self, block: numpy.ndarray, what: str) -> None:
        if self._storage_dtype == numpy.float16 and block.size and float(numpy.abs(block).max()) > _FLOAT16_MAX:
            raise ValueError(
                f"scaled {what} frames reach {float(numpy.abs(block).max()):.3g}, beyond float16's range "
                f"({_FLOAT16_MAX:g}): use storage_dtype='float32' (data.device_storage = \"float32\")"
            )

    def batches(self, batch_size: int, rng: numpy.random.Generator):
        """One epoch of ``(X, Y)`` batches, ``(B, F)`` float32 arrays of the module.

        Args:
            batch_size: B; the last batch holds ``N mod B`` frames when that is not 0.
            rng: decides the order (drawn at the start of the epoch).
        """
        _check_batch_size(batch_size)
        order = backend.to_device(
            epoch_order(self._lengths, self._block_frames, self._blocks_in_memory, rng), self._module
        )
        cols = self._module.arange(self.n_freq, dtype=numpy.int64).reshape(1, -1)
        for start in range(0, self.n_frames, batch_size):
            rows = order[start : start + batch_size].reshape(-1, 1)
            x = self._module.empty((rows.shape[0], self.n_freq), dtype=numpy.float32)
            y = self._module.empty((rows.shape[0], self.n_freq), dtype=numpy.float32)
            gather_rows(self._mixture, self._vocals, rows, cols, x, y)
            yield x, y


def choose_frame_source(mixture, vocals, *, scale=None, module=None, device_budget_bytes: int = 0,
                        storage_dtype: str = "float16", block_frames: int = DEFAULT_BLOCK_FRAMES,
                        blocks_in_memory: int = DEFAULT_BLOCKS_IN_MEMORY):
    """The fastest frame source that fits.

    :class:`DeviceFrames` when ``module`` is a device module (not NumPy)
    and both arrays at ``storage_dtype`` fit in ``device_budget_bytes``;
    otherwise :class:`ArrayFrames`, streaming batches to ``module``. On
    NumPy the host arrays (memmaps) are read directly: the operating
    system's page cache already keeps what fits in memory.

    Args:
        mixture, vocals: ``(N, F)`` host arrays or lists of them (one per track).
        scale: ``(F,)`` per-band factor (``1/std``) or None.
        module: array module of the batches; None or NumPy means the host.
        device_budget_bytes: device memory the training frames may take.
        storage_dtype: "float16" or "float32", for :class:`DeviceFrames`.
        block_frames, blocks_in_memory: the chunked shuffle's settings.
    """
    _check_storage_dtype(storage_dtype)
    blocks = {"block_frames": block_frames, "blocks_in_memory": blocks_in_memory}
    if module is None or module is numpy:
        return ArrayFrames(mixture, vocals, scale=scale, module=None, **blocks)
    pieces = _as_pieces(mixture, "mixture")
    needed = device_bytes(sum(piece.shape[0] for piece in pieces), pieces[0].shape[1], storage_dtype)
    if needed <= device_budget_bytes:
        return DeviceFrames(mixture, vocals, scale=scale, module=module, storage_dtype=storage_dtype, **blocks)
    return ArrayFrames(mixture, vocals, scale=scale, module=module, **blocks)
