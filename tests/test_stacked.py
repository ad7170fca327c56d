"""Stacked training: R runs of one kind as one model give what R separate
runs give, resume exactly from any interruption, and issue a number of
device launches per step that does not grow with R."""

import re

import numpy
import pytest

from nca_np import backend, train as train_module
from nca_np.frames import ArrayFrames, DeviceFrames
from nca_np.models import build_model, kind_names, model_kind
from nca_np.stacked import StackedAdam, StackedModel
from nca_np.train import (
    CHECKPOINT,
    FINAL_MODEL,
    NEXT_CHECKPOINT,
    TrainSettings,
    order_rng,
    read_state,
    train,
    train_stacked,
)
from strict_xp import counting

SEEDS = [1, 2, 3]
#: A step size large enough that the three runs plateau, and stop, at different epochs.
SETTINGS = TrainSettings(batch_size=16, learning_rate=0.1, max_epochs=30, patience_halve=1, patience_stop=2)
TIMING = {"seconds", "frames_per_second", "stack_seconds", "stacked_runs"}


def _data(n_frames=300, n_freq=8, seed=0):
    rng = backend.rng(seed)
    X = rng.uniform(0.0, 1.0, size=(n_frames, n_freq)).astype(numpy.float32)
    return X, X * numpy.linspace(0.1, 0.9, n_freq, dtype=numpy.float32)


def _final(run_dir):
    arrays, meta = read_state(run_dir / FINAL_MODEL)
    return [arrays[k] for k in sorted(arrays) if k.startswith("param_")], meta


def _without_timing(history):
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


def _stacked_run(tmp_path, kind="dae", settings=SETTINGS, **kwargs):
    return train_stacked(kind, ArrayFrames(*_data()), [tmp_path / f"run_{i}" for i in range(len(SEEDS))],
                         settings=settings, seeds=SEEDS, order_seed=0, progress=False, **kwargs)


def _assert_same_runs(first, second):
    """Two folders of runs hold bit-identical final models and histories."""
    for i in range(len(SEEDS)):
        (params_a, meta_a), (params_b, meta_b) = _final(first / f"run_{i}"), _final(second / f"run_{i}")
        for p, q in zip(params_a, params_b):
            numpy.testing.assert_array_equal(p, q)
        assert _without_timing(meta_a["history"]) == _without_timing(meta_b["history"])


@pytest.mark.parametrize("kind", kind_names())
def test_stacked_gradients_are_each_runs_own_gradients(kind):
    models = [build_model(kind, 6, seed=seed, dtype=numpy.float64) for seed in SEEDS]
    rng = backend.rng(4)
    for model in models:
        for b in model.biases:
            b[...] = rng.normal(0.0, 0.3, size=b.shape)
    X, Y = rng.uniform(0.0, 2.0, size=(5, 6)), rng.uniform(0.0, 1.0, size=(5, 6))
    stack = StackedModel.from_models(models)
    grads, squared = numpy.zeros_like(stack.flat), numpy.zeros(3)
    stack.loss_and_grads(X, Y, grads, squared)
    for r, model in enumerate(models):
        loss, expected = model.loss_and_grads(X, Y)
        numpy.testing.assert_allclose(squared[r] / Y.size, loss, rtol=1e-13)
        for mine, theirs in zip(stack.layout.row_views(grads[r]), expected):
            numpy.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind, dtype", [("dae", "float32"), ("sf", "float32"), ("mss-dae", "float64"),
                                         ("dae", "float64")])
def test_three_stacked_runs_equal_three_separate_runs(tmp_path, kind, dtype):
    """Same parameters, histories and final models, bit for bit, while the
    runs stop at different epochs (so stopped runs leave the stack)."""
    settings = TrainSettings(**{**SETTINGS.__dict__, "dtype": dtype})
    _stacked_run(tmp_path / "stacked", kind, settings)
    for i, seed in enumerate(SEEDS):
        train(kind, ArrayFrames(*_data()), tmp_path / "separate" / f"run_{i}", settings=settings, seed=seed,
              order_seed=0, progress=False)
    _assert_same_runs(tmp_path / "stacked", tmp_path / "separate")
    epochs = [len(_final(tmp_path / "stacked" / f"run_{i}")[1]["history"]) for i in range(3)]
    if kind == "dae":
        assert len(set(epochs)) == 3, epochs
    last = _final(tmp_path / "stacked" / f"run_{epochs.index(max(epochs))}")[1]["history"]
    assert last[0]["stacked_runs"] == 3 and last[-1]["stacked_runs"] < 3 or len(set(epochs)) == 1


def test_runs_share_the_batch_order_of_the_kinds_stream(tmp_path):
    _stacked_run(tmp_path, settings=TrainSettings(batch_size=16, max_epochs=1))
    meta = read_state(tmp_path / "run_0" / FINAL_MODEL)[1]
    assert meta["batch_order"] == {"seed": 0, "stream": ["batch-order", "dae"]}
    assert meta["rng_state"] == read_state(tmp_path / "run_2" / FINAL_MODEL)[1]["rng_state"]
    first = order_rng("dae", 0).permutation(10)
    assert (first == order_rng("dae", 0).permutation(10)).all()
    assert not (first == order_rng("sf", 0).permutation(10)).all()


class Interrupt(Exception):
    pass


class FailingFrames(ArrayFrames):
    """Frames whose ``fail_at``-th batch (counted over epochs) raises, once."""

    def __init__(self, *arrays, fail_at):
        super().__init__(*arrays)
        self.fail_at, self.served = fail_at, 0

    def batches(self, batch_size, rng):
        for batch in super().batches(batch_size, rng):
            self.served += 1
            if self.served == self.fail_at:
                raise Interrupt
            yield batch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    _stacked_run(folder)
    return folder


def _resume(folder):
    lines = []
    _stacked_run(folder, log=lines.append)
    return lines


def test_resume_after_a_failure_mid_epoch_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    dirs = [tmp_path / f"run_{i}" for i in range(3)]
    with pytest.raises(Interrupt):
        train_stacked("dae", FailingFrames(*_data(), fail_at=3 * 19 + 7), dirs, settings=SETTINGS, seeds=SEEDS,
                      order_seed=0, progress=False)
    assert all(read_state(d / CHECKPOINT)[1]["history"][-1]["epoch"] == 3 for d in dirs)
    lines = _resume(tmp_path)
    assert sum("resuming after epoch 3" in line for line in lines) == 3
    # without a terminal: one line per epoch, with the time it took
    assert re.match(r"dae epoch 4 \(3 runs, [0-9.]+ s, [0-9]+ frames/s per run\): seed 1 loss [0-9.e-]+ lr 0.1 ", lines[3])
    _assert_same_runs(tmp_path, uninterrupted)


def test_resume_after_a_failure_at_the_end_of_an_epoch_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    def stop(record):
        if record["epoch"] == 4:
            raise Interrupt
    with pytest.raises(Interrupt):
        _stacked_run(tmp_path, on_epoch_end=stop)
    _resume(tmp_path)
    _assert_same_runs(tmp_path, uninterrupted)


def test_a_kill_between_two_runs_checkpoint_writes_resumes_exactly(tmp_path, uninterrupted, monkeypatch):
    """Killed after the second run's new checkpoint of epoch 5 is written,
    before the third's: the new files are dropped and all resume from epoch 4."""
    real_save, calls = train_module.save_state, []

    def save_until_killed(path, *args, **kwargs):
        calls.append(path)
        if path.name == NEXT_CHECKPOINT and sum(p.name == NEXT_CHECKPOINT for p in calls) == 4 * 3 + 3:
            raise Interrupt
        real_save(path, *args, **kwargs)
    monkeypatch.setattr(train_module, "save_state", save_until_killed)
    with pytest.raises(Interrupt):
        _stacked_run(tmp_path)
    monkeypatch.setattr(train_module, "save_state", real_save)
    assert [(tmp_path / f"run_{i}" / NEXT_CHECKPOINT).exists() for i in range(3)] == [True, True, False]
    _resume(tmp_path)
    _assert_same_runs(tmp_path, uninterrupted)
    assert not list(tmp_path.rglob(NEXT_CHECKPOINT))


def test_a_kill_between_two_renames_resumes_exactly(tmp_path, uninterrupted, monkeypatch):
    """Killed after the first run's new checkpoint replaced its old one: the
    commit was complete, so the other renames are finished on restart."""
    real_promote, calls = train_module._promote, []

    def promote_until_killed(run_dirs):
        calls.append(run_dirs)
        if len(calls) == 5:
            real_promote(run_dirs[:1])
            raise Interrupt
        real_promote(run_dirs)
    monkeypatch.setattr(train_module, "_promote", promote_until_killed)
    with pytest.raises(Interrupt):
        _stacked_run(tmp_path)
    monkeypatch.setattr(train_module, "_promote", real_promote)
    epochs = [read_state(tmp_path / f"run_{i}" / CHECKPOINT)[1]["history"][-1]["epoch"] for i in range(3)]
    assert epochs == [5, 4, 4]
    _resume(tmp_path)
    _assert_same_runs(tmp_path, uninterrupted)


def test_runs_at_different_epochs_resume_to_the_same_results(tmp_path, uninterrupted):
    """Runs of one kind trained by other calls (here run 0 alone for 6
    epochs) are trained in groups of equal progress, with the same numbers."""
    dirs = [tmp_path / f"run_{i}" for i in range(3)]

    def stop(record):
        if record["epoch"] == 6:
            raise Interrupt
    with pytest.raises(Interrupt):
        train("dae", ArrayFrames(*_data()), dirs[0], settings=SETTINGS, seed=SEEDS[0], order_seed=0,
              progress=False, on_epoch_end=stop)
    _resume(tmp_path)
    _assert_same_runs(tmp_path, uninterrupted)


def test_checkpoints_record_the_frame_source_and_tf32_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("CUPY_TF32", "1")
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    settings = TrainSettings(batch_size=16, max_epochs=1)
    streamed = train("dae", ArrayFrames(*_data()), tmp_path / "a", settings=settings, seed=0, progress=False)
    resident = train("dae", DeviceFrames(*_data(), module=numpy, storage_dtype="float32"), tmp_path / "b",
                     settings=settings, seed=0, progress=False)
    assert streamed["frame_sources"] == ["streamed"] and resident["frame_sources"] == ["device-resident"]
    assert streamed["tf32"] == [{"CUPY_TF32": "1", "NVIDIA_TF32_OVERRIDE": None}]
    numpy.testing.assert_array_equal(_final(tmp_path / "a")[0][0], _final(tmp_path / "b")[0][0])


def test_training_with_the_fused_kernels_matches_numpy(tmp_path):
    """The whole loop on the counting stand-in, which runs the CUDA sources
    of nca_np.kernels, gives the numbers of the NumPy forms."""
    settings = TrainSettings(batch_size=16, learning_rate=0.01, max_epochs=3, dtype="float64")
    X, Y = _data()
    for kind in ("dae", "sf"):
        train_stacked(kind, ArrayFrames(X, Y), [tmp_path / kind / "host" / str(s) for s in SEEDS], settings=settings,
                      seeds=SEEDS, order_seed=0, progress=False)
        frames = DeviceFrames(X, Y, module=counting, storage_dtype="float16")
        train_stacked(kind, frames, [tmp_path / kind / "device" / str(s) for s in SEEDS], settings=settings,
                      seeds=SEEDS, order_seed=0, progress=False, module=counting)
        for seed in SEEDS:
            host, device = _final(tmp_path / kind / "host" / str(seed)), _final(tmp_path / kind / "device" / str(seed))
            for p, q in zip(host[0], device[0]):  # float16 storage rounds the frames by up to 2^-11
                numpy.testing.assert_allclose(q, p, rtol=2e-2, atol=1e-3)
            assert device[1]["frame_sources"] == ["device-resident"]


def _launches_of_one_step(kind, runs):
    X, Y = _data(n_frames=64, n_freq=8)
    frames = DeviceFrames(X, Y, module=counting, storage_dtype="float16")
    stack = StackedModel.build(kind, 8, list(range(runs)), module=counting)
    optimizer = StackedAdam(stack, lr=1e-3)
    grads = counting.zeros_like(stack.flat)
    sums = counting.zeros((runs, 4), dtype=numpy.float64)
    batches = frames.batches(16, backend.rng(0))
    for step in range(2):  # the first step also moves the epoch's order and the runs' η to the device
        counting.reset()
        X_batch, Y_batch = next(batches)
        stack.loss_and_grads(X_batch, Y_batch, grads, sums[:, step])
        optimizer.step(grads)
    return counting.launches, counting.transfers


@pytest.mark.parametrize("kind", kind_names())
def test_device_launches_per_step_do_not_grow_with_the_number_of_runs(kind):
    """One gather, per layer a product and a bias+ReLU forward, two launches
    for the loss, per layer a weight product and a bias sum backward (and a
    product and a ReLU gate below the first), one Adam update."""
    n_layers = model_kind(kind).n_layers
    counts = {runs: _launches_of_one_step(kind, runs) for runs in (1, 4)}
    assert counts[1] == counts[4] == (6 * n_layers + 2, 0), counts


@pytest.mark.parametrize("kind", kind_names())
def test_stacked_gradients_pass_finite_differences(kind):
    from nca_np.gradcheck import THRESHOLD, check_stacked_gradients
    (name, error), = check_stacked_gradients(kind, runs=2)
    assert error < THRESHOLD, (name, error)


def test_the_stacked_check_catches_a_forgotten_relu_gate(monkeypatch):
    from nca_np import stacked
    from nca_np.gradcheck import THRESHOLD, check_stacked_gradients
    monkeypatch.setattr(stacked, "relu_backward", lambda dz, a: dz)
    (_, error), = check_stacked_gradients("mss-dae", runs=2)
    assert error > 1e3 * THRESHOLD
