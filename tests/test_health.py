"""A trained run's health (nca_np.train.run_health): dead networks are found,
warned about and recorded in ``model.npz``; evaluate records their units
as failed; museval works with NumPy 2 (nca_np.evaluate._museval)."""

import numpy
import pytest

from nca_np import evaluate
from nca_np.frames import ArrayFrames
from nca_np.models import build_model
from nca_np.train import TrainSettings, recorded_health, run_health, train


def frames(n=64, n_freq=8, seed=0):
    return numpy.abs(numpy.random.default_rng(seed).standard_normal((n, n_freq))).astype(numpy.float32)


@pytest.mark.parametrize("kind", ["dae", "mss-dae", "sf"])
def test_a_fresh_network_is_alive(kind):
    health = run_health(build_model(kind, 8, seed=0), frames())
    assert health == {"dead": False, "reason": None, "zero_output_share": health["zero_output_share"],
                      "dead_layers": [], "frames": 64}
    assert health["zero_output_share"] < 1.0


def test_an_all_zero_output_is_dead():
    model = build_model("dae", 8, seed=0)
    model.biases[-1][...] = -1e3
    health = run_health(model, frames())
    assert health["dead"] and health["zero_output_share"] == 1.0 and health["dead_layers"] == [2]
    assert health["reason"] == "its output is zero on all 64 sample frames"


def test_a_layer_with_every_relu_off_is_dead_even_when_the_output_is_not_zero():
    model = build_model("mss-dae", 8, seed=0)
    model.biases[0][...] = -1e3   # layer 1 off: what follows sees zeros
    for bias in model.biases[1:]:
        bias[...] = 1.0           # a constant, non-zero output
    health = run_health(model, frames())
    assert health["dead"] and health["dead_layers"] == [1] and health["zero_output_share"] == 0.0
    assert health["reason"].startswith("every ReLU of layer 1 is off on all 64 sample frames")


def test_training_records_health_and_warns_of_a_dead_run(tmp_path):
    X = frames(600)
    Y = 0.5 * X
    lines = []
    settings = TrainSettings(batch_size=16, learning_rate=10.0, max_epochs=3)
    meta = train("dae", ArrayFrames(X, Y), tmp_path / "dead", settings=settings, seed=0, progress=False,
                 log=lines.append)
    assert meta["health"]["dead"] and recorded_health(tmp_path / "dead") == meta["health"]
    assert any(line.startswith("warning: dae seed 0 ended dead: its output is zero") for line in lines), lines
    alive = train("dae", ArrayFrames(X, Y), tmp_path / "alive", settings=TrainSettings(batch_size=16,
                  learning_rate=3e-3, max_epochs=3), seed=0, progress=False, log=lines.append)
    assert alive["health"]["dead"] is False and alive["health"]["improved"] is True
    assert alive["health"]["first_loss"] == alive["history"][0]["loss"]


def test_museval_gets_its_numpy_1_alias_and_handles_a_singular_matrix(monkeypatch):
    museval = evaluate._museval()
    assert numpy.linalg.linalg.LinAlgError is numpy.linalg.LinAlgError
    solve = numpy.linalg.solve

    def singular(*args, **kwargs):
        raise numpy.linalg.LinAlgError("Singular matrix")
    monkeypatch.setattr(numpy.linalg, "solve", singular)
    rng = numpy.random.default_rng(0)
    rate = 8000
    vocals, accompaniment = rng.standard_normal((2, 2 * rate)).astype(numpy.float32)
    references = {"vocals": vocals[:, None], "accompaniment": accompaniment[:, None]}
    scores = evaluate.score_excerpt(references, {"vocals": vocals + 0.01 * accompaniment,
                                                 "accompaniment": accompaniment + 0.01 * vocals}, rate)
    assert scores["vocals"]["median"]["SDR"] > 20.0  # museval's own least-squares answer
    monkeypatch.setattr(numpy.linalg, "solve", solve)
    assert museval is not None


def test_an_interruption_inside_museval_stays_an_interruption(monkeypatch):
    evaluate._museval()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(numpy.linalg, "solve", interrupted)
    signal = numpy.random.default_rng(1).standard_normal((8000, 1)).astype(numpy.float32)
    with pytest.raises(KeyboardInterrupt):
        evaluate.score_excerpt({"vocals": signal, "accompaniment": signal[::-1].copy()},
                               {"vocals": signal[:, 0], "accompaniment": signal[::-1, 0].copy()}, 8000)
