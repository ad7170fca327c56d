import numpy
import pytest

from nca_np import backend
from nca_np.frames import ArrayFrames
from nca_np.models import build_model, kind_names
from nca_np.train import CHECKPOINT, FINAL_MODEL, TrainSettings, TrainingDiverged, load_model, read_state, train


def _data(n_frames=600, n_freq=8, seed=0):
    """Mixtures whose vocals are a fixed spectral share of the mixture."""
    rng = backend.rng(seed)
    X = rng.uniform(0.0, 1.0, size=(n_frames, n_freq)).astype(numpy.float32)
    share = numpy.linspace(0.1, 0.9, n_freq, dtype=numpy.float32)
    return X, X * share


def _problem(**kwargs):
    return ArrayFrames(*_data(**kwargs))


SETTINGS = TrainSettings(batch_size=32, learning_rate=3e-3, max_epochs=6)


def _params(run_dir):
    arrays, _ = read_state(run_dir / FINAL_MODEL)
    return [arrays[k] for k in sorted(arrays) if k.startswith("param_")]


@pytest.mark.parametrize("kind", kind_names())
def test_training_lowers_the_loss_far_below_its_start(tmp_path, kind):
    X, Y = _data(n_freq=64)
    initial = float(build_model(kind, 64, seed=0).loss_and_grads(X, Y)[0])
    settings = TrainSettings(batch_size=16, learning_rate=3e-3, max_epochs=20)
    meta = train(kind, ArrayFrames(X, Y), tmp_path, settings=settings, seed=0, progress=False)
    losses = [r["loss"] for r in meta["history"]]
    assert len(losses) == 20 and meta["status"] == "finished"
    assert losses[-1] < 0.25 * initial
    record = meta["history"][0]
    assert record["frames_per_second"] > 0 and record["learning_rate"] == 3e-3
    assert all(r["learning_rate"] <= 3e-3 for r in meta["history"])
    model, meta2, _ = load_model(tmp_path / FINAL_MODEL)
    assert model.kind == kind and meta2["history"] == meta["history"]


def test_same_seed_gives_bit_identical_parameters(tmp_path):
    train("sf", _problem(), tmp_path / "a", settings=SETTINGS, seed=5, progress=False)
    train("sf", _problem(), tmp_path / "b", settings=SETTINGS, seed=5, progress=False)
    train("sf", _problem(), tmp_path / "c", settings=SETTINGS, seed=6, progress=False)
    for p, q in zip(_params(tmp_path / "a"), _params(tmp_path / "b")):
        numpy.testing.assert_array_equal(p, q)
    assert not numpy.array_equal(_params(tmp_path / "a")[0], _params(tmp_path / "c")[0])


class Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    train("dae", _problem(), tmp_path / "whole", settings=SETTINGS, seed=1, progress=False)

    def stop_after_epoch_3(record):
        if record["epoch"] == 3:
            raise Interrupt
    with pytest.raises(Interrupt):
        train("dae", _problem(), tmp_path / "cut", settings=SETTINGS, seed=1, progress=False,
              on_epoch_end=stop_after_epoch_3)
    assert (tmp_path / "cut" / CHECKPOINT).exists() and not (tmp_path / "cut" / FINAL_MODEL).exists()
    lines = []
    meta = train("dae", _problem(), tmp_path / "cut", settings=SETTINGS, seed=1, progress=False, log=lines.append)
    assert "resuming after epoch 3" in lines[0]
    for p, q in zip(_params(tmp_path / "whole"), _params(tmp_path / "cut")):
        numpy.testing.assert_array_equal(p, q)
    whole = read_state(tmp_path / "whole" / FINAL_MODEL)[1]["history"]
    assert [r["loss"] for r in meta["history"]] == [r["loss"] for r in whole]


def test_finished_run_is_not_trained_again(tmp_path):
    train("dae", _problem(), tmp_path, settings=SETTINGS, seed=1, progress=False)
    stamp = (tmp_path / FINAL_MODEL).stat().st_mtime_ns
    train("dae", _problem(), tmp_path, settings=SETTINGS, seed=1, progress=False)
    assert (tmp_path / FINAL_MODEL).stat().st_mtime_ns == stamp


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    X, Y = _data()
    settings = TrainSettings(batch_size=32, max_epochs=5)

    def stop_after_epoch_2(record):
        if record["epoch"] == 2:
            raise Interrupt
    with pytest.raises(Interrupt):
        train("dae", ArrayFrames(X, Y), tmp_path, settings=settings, seed=0, progress=False,
              on_epoch_end=stop_after_epoch_2)
    before = (tmp_path / CHECKPOINT).read_bytes()
    X[5, 3] = numpy.nan
    with pytest.raises(TrainingDiverged, match=r"loss became nan in epoch 3.*last good checkpoint"):
        train("dae", ArrayFrames(X, Y), tmp_path, settings=settings, seed=0, progress=False)
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    assert read_state(tmp_path / CHECKPOINT)[1]["history"][-1]["epoch"] == 2


def test_checkpoint_holds_everything_needed(tmp_path):
    config = {"train": {"runs": 1}}
    train("sf", _problem(), tmp_path, settings=SETTINGS, seed=2, progress=False,
          scaler_state={"std": numpy.arange(1.0, 9.0)}, config=config)
    arrays, meta = read_state(tmp_path / CHECKPOINT)
    assert {"param_0", "adam_m_0", "adam_v_3", "scaler_std"} <= set(arrays)
    for key in ("schedule", "adam", "rng_state", "config", "seed", "versions", "history", "settings"):
        assert key in meta
    assert meta["config"] == config and meta["seed"] == 2 and meta["adam"]["t"] == 6 * 19


def test_stop_between_last_checkpoint_and_final_model_trains_no_extra_epoch(tmp_path):
    meta = train("dae", _problem(), tmp_path, settings=SETTINGS, seed=1, progress=False)
    expected = _params(tmp_path)
    (tmp_path / FINAL_MODEL).unlink()  # as if stopped right after the last checkpoint
    again = train("dae", _problem(), tmp_path, settings=SETTINGS, seed=1, progress=False)
    assert len(again["history"]) == len(meta["history"])
    for p, q in zip(expected, _params(tmp_path)):
        numpy.testing.assert_array_equal(p, q)


def test_resume_refuses_frames_of_another_precision(tmp_path):
    from nca_np.errors import UserError
    from nca_np.frames import DeviceFrames

    X, Y = _data()

    def stop(record):
        raise Interrupt
    with pytest.raises(Interrupt):
        train("dae", ArrayFrames(X, Y), tmp_path, settings=SETTINGS, seed=1, progress=False, on_epoch_end=stop)
    coarse = DeviceFrames(X, Y, module=numpy, storage_dtype="float16")
    with pytest.raises(UserError, match="trained on float32 frames.*float16"):
        train("dae", coarse, tmp_path, settings=SETTINGS, seed=1, progress=False)


def test_damaged_checkpoint_is_one_clear_error(tmp_path):
    from nca_np.errors import UserError
    (tmp_path / CHECKPOINT).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match="not a readable nca_np model or checkpoint.*delete it"):
        train("dae", _problem(), tmp_path, settings=SETTINGS, seed=1, progress=False)


def test_training_on_a_device_module_matches_numpy(tmp_path):
    """The whole loop (batches, model, Adam, checkpoint) runs on a stand-in
    device module without one implicit host conversion, with the numbers of
    the NumPy run."""
    from strict_xp import strict
    X, Y = _data()
    train("sf", ArrayFrames(X, Y), tmp_path / "host", settings=SETTINGS, seed=3, progress=False)
    train("sf", ArrayFrames(X, Y, module=strict), tmp_path / "device", settings=SETTINGS, seed=3,
          progress=False, module=strict)
    for p, q in zip(_params(tmp_path / "host"), _params(tmp_path / "device")):
        numpy.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-7)
