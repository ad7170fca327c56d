import numpy
import pytest

from nca_np import backend
from nca_np.models import build_model, kind_names, model_kind


def _batch(module, n_freq=7, batch=4, seed=0, dtype=numpy.float32):
    rng = backend.rng(seed)
    X = rng.uniform(0.0, 2.0, size=(batch, n_freq)).astype(dtype)
    Y = rng.uniform(0.0, 1.0, size=(batch, n_freq)).astype(dtype)
    return backend.to_device(X, module), backend.to_device(Y, module)


@pytest.mark.parametrize("kind", kind_names())
def test_structure_and_initialisation(kind):
    F = 300
    model = build_model(kind, F, seed=1)
    assert len(model.params) == 2 * model_kind(kind).n_layers
    for W, b in zip(model.weights, model.biases):
        assert W.shape == (F, F) and b.shape == (F,)
        assert W.dtype == numpy.float32 and b.dtype == numpy.float32
        assert not b.any()
        # Glorot normal: std sqrt(2 / (F + F)) = sqrt(1 / F)
        assert W.std() == pytest.approx(numpy.sqrt(1.0 / F), rel=0.01)
        assert abs(W.mean()) < 0.01 / numpy.sqrt(F)
    assert not numpy.array_equal(model.weights[0], model.weights[1])


@pytest.mark.parametrize("kind", kind_names())
def test_forward_matches_the_equations(kind, xp_module):
    model = build_model(kind, 7, seed=2, dtype=numpy.float64, module=xp_module)
    for b in model.biases:
        b += 0.1
    X, Y = _batch(xp_module, dtype=numpy.float64)
    Xh = backend.to_host(X)
    h = Xh
    for W, b in zip(model.weights, model.biases):
        h = numpy.maximum(backend.to_host(W) @ h.T + backend.to_host(b)[:, None], 0).T
    expected_v = h
    expected_y = Xh * h if kind == "sf" else h
    numpy.testing.assert_allclose(backend.to_host(model.decoder_output(X)), expected_v, rtol=1e-12)
    numpy.testing.assert_allclose(backend.to_host(model.predict(X)), expected_y, rtol=1e-12)
    loss, grads = model.loss_and_grads(X, Y)
    expected_loss = ((expected_y - backend.to_host(Y)) ** 2).mean()
    assert backend.to_float(loss) == pytest.approx(expected_loss, rel=1e-12)
    assert [g.shape for g in grads] == [p.shape for p in model.params]


@pytest.mark.parametrize("kind", kind_names())
def test_float32_stays_float32(kind, xp_module):
    model = build_model(kind, 7, module=xp_module)
    X, Y = _batch(xp_module, dtype=numpy.float64)  # float64 data is cast, not propagated
    loss, grads = model.loss_and_grads(X, Y)
    assert loss.dtype == numpy.float32
    assert all(g.dtype == numpy.float32 for g in grads)
    assert model.predict(X).dtype == numpy.float32


def test_params_list_is_the_model(xp_module):
    model = build_model("dae", 5, module=xp_module)
    X, _ = _batch(xp_module, n_freq=5)
    model.params[2] = xp_module.zeros((5, 5), dtype=numpy.float32)
    model.params[3] = xp_module.ones(5, dtype=numpy.float32)
    assert backend.to_host(model.predict(X)).tolist() == [[1.0] * 5] * 4
    model.params[3][...] = 2.0
    assert backend.to_host(model.predict(X)).tolist() == [[2.0] * 5] * 4


def test_gradients_into_given_buffers(xp_module):
    model = build_model("mss-dae", 6, module=xp_module)
    X, Y = _batch(xp_module, n_freq=6)
    _, fresh = model.loss_and_grads(X, Y)
    buffers = [xp_module.empty_like(p) for p in model.params]
    _, written = model.loss_and_grads(X, Y, out=buffers)
    for f, w, b in zip(fresh, written, buffers):
        numpy.testing.assert_array_equal(backend.to_host(f), backend.to_host(b))


def test_bad_input_is_named():
    model = build_model("sf", 6)
    with pytest.raises(ValueError, match=r"shape \(4, 5\).*6 bins"):
        model.predict(numpy.ones((4, 5), dtype=numpy.float32))
    with pytest.raises(ValueError, match="unknown model kind 'vae'"):
        build_model("vae", 6)
