import numpy
import pytest

from nca_np import backend, optim
from nca_np.optim import Adam, PlateauSchedule


def test_adam_two_steps_by_hand(xp_module):
    p = backend.to_device(numpy.array([1.0]), xp_module)
    adam = Adam([p], lr=0.1)
    adam.step([backend.to_device(numpy.array([0.5]), xp_module)])
    # t = 1: m = 0.1·0.5 = 0.05, v = 0.001·0.25 = 0.00025,
    # m̂ = 0.05/0.1 = 0.5, v̂ = 0.00025/0.001 = 0.25, step = 0.1·0.5/(0.5 + 1e-8)
    p1 = 1.0 - 0.1 * 0.5 / (0.5 + 1e-8)
    assert backend.to_host(p)[0] == pytest.approx(p1, abs=1e-15)
    adam.step([backend.to_device(numpy.array([-1.0]), xp_module)])
    # t = 2: m = 0.9·0.05 − 0.1 = −0.055, v = 0.999·0.00025 + 0.001 = 0.00124975,
    # m̂ = −0.055/0.19, v̂ = 0.00124975/0.001999
    p2 = p1 - 0.1 * (-0.055 / 0.19) / (numpy.sqrt(0.00124975 / 0.001999) + 1e-8)
    assert backend.to_host(p)[0] == pytest.approx(p2, abs=1e-15)
    assert adam.t == 2
    assert backend.to_host(adam.m[0])[0] == pytest.approx(-0.055, rel=1e-14)
    assert backend.to_host(adam.v[0])[0] == pytest.approx(0.00124975, rel=1e-14)


def test_textbook_step_gives_the_numbers_worked_by_hand():
    p1, m, v = optim.adam_step_textbook(numpy.array([1.0]), numpy.array([0.5]), numpy.zeros(1), numpy.zeros(1),
                                        1, 0.1, 0.9, 0.999, 1e-8)
    assert p1[0] == pytest.approx(1.0 - 0.1 * 0.5 / (0.5 + 1e-8), abs=1e-15)
    p2, m, v = optim.adam_step_textbook(p1, numpy.array([-1.0]), m, v, 2, 0.1, 0.9, 0.999, 1e-8)
    assert m[0] == pytest.approx(-0.055, rel=1e-14) and v[0] == pytest.approx(0.00124975, rel=1e-14)
    assert p2[0] == pytest.approx(p1[0] - 0.1 * (-0.055 / 0.19) / (numpy.sqrt(0.00124975 / 0.001999) + 1e-8),
                                  abs=1e-15)


#: Hyper-parameters of the oracle comparison: ε large enough that where it
#: enters the update shows in the result.
ORACLE_SETTINGS = {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-3}


def adam_against_textbook(steps=250, seed=0):
    """Largest relative difference between :class:`Adam` and
    :func:`optim.adam_step_textbook` over ``steps`` steps of random float64
    gradients, for the parameters and both moments of two arrays."""
    rng = backend.rng(seed)
    params = [rng.normal(size=(5, 9)), rng.normal(size=7)]
    reference = [(p.copy(), numpy.zeros_like(p), numpy.zeros_like(p)) for p in params]
    adam = Adam(params, **ORACLE_SETTINGS)
    for t in range(1, steps + 1):
        scale = 10.0 ** rng.uniform(-3, 1)  # gradients of varying size
        grads = [scale * rng.normal(size=p.shape) for p in params]
        adam.step(grads)
        reference = [optim.adam_step_textbook(theta, g, m, v, t, *ORACLE_SETTINGS.values())
                     for (theta, m, v), g in zip(reference, grads)]
    fast = [(p, m, v) for p, m, v in zip(params, adam.m, adam.v)]
    return max(float(numpy.max(numpy.abs(a - b) / numpy.maximum(numpy.abs(b), 1e-300)))
               for mine, theirs in zip(fast, reference) for a, b in zip(mine, theirs))


def test_chunked_update_equals_the_textbook_step_over_many_steps(monkeypatch):
    monkeypatch.setattr(optim, "CHUNK", 7)  # chunk borders inside both arrays
    assert adam_against_textbook() < 1e-12


def _swapped_decay_rates(correct):
    def update(module, flat, start, stop, chunk, scratch, coefficients):
        b1, b2, eps_scaled, step_scaled = coefficients
        correct(module, flat, start, stop, chunk, scratch, (b2, b1, eps_scaled, step_scaled))
    return update


def _uncorrected_eps(correct):
    def update(module, flat, start, stop, chunk, scratch, coefficients):
        b1, b2, eps_scaled, step_scaled = coefficients
        correct(module, flat, start, stop, chunk, scratch, (b1, b2, ORACLE_SETTINGS["eps"], step_scaled))
    return update


@pytest.mark.parametrize("plant", [_swapped_decay_rates, _uncorrected_eps], ids=["β1, β2 swapped", "ε not rescaled"])
def test_the_textbook_comparison_catches_a_planted_mistake(monkeypatch, plant):
    monkeypatch.setattr(optim, "CHUNK", 7)
    monkeypatch.setattr(optim, "update_range", plant(optim.update_range))
    assert adam_against_textbook() > 1e-6  # a correct update differs by ~1e-15


def test_float32_parameters_stay_float32():
    p = numpy.ones(4, dtype=numpy.float32)
    adam = Adam([p])
    adam.step([numpy.full(4, 0.5, dtype=numpy.float32)])
    assert p.dtype == numpy.float32 and adam.m[0].dtype == numpy.float32
    assert p[0] == pytest.approx(1.0 - 1e-4, rel=1e-6)


def test_state_round_trip_continues_identically():
    rng = backend.rng(1)
    grads = [rng.normal(size=6) for _ in range(4)]
    p = numpy.zeros(6)
    a = Adam([p], lr=0.1)
    for g in grads[:2]:
        a.step([g])
    q = p.copy()
    b = Adam([q], lr=0.5)
    b.load_state_dict({k: (v if k not in ("m", "v") else [x.copy() for x in v]) for k, v in a.state_dict().items()})
    for g in grads[2:]:
        a.step([g])
        b.step([g])
    numpy.testing.assert_array_equal(p, q)


def test_step_rejects_mismatched_gradients():
    with pytest.raises(ValueError, match="2 gradients for 1 parameters"):
        Adam([numpy.zeros(2)]).step([numpy.zeros(2), numpy.zeros(2)])
    with pytest.raises(ValueError, match=r"shape \(3,\) for a parameter of shape \(2,\)"):
        Adam([numpy.zeros(2)]).step([numpy.zeros(3)])


def test_plateau_schedule_halves_after_two_and_stops_after_four():
    s = PlateauSchedule(patience_halve=2, patience_stop=4, max_epochs=50)
    decisions = [s.update(x) for x in [5.0, 4.0, 4.5, 4.1, 3.0, 3.5, 3.2, 3.1, 3.0]]
    assert decisions == ["improved", "improved", "same", "reduce", "improved",
                         "same", "reduce", "same", "stop"]
    assert s.best == 3.0


def test_plateau_schedule_stops_at_max_epochs_and_round_trips():
    s = PlateauSchedule(max_epochs=3)
    assert [s.update(x) for x in [3.0, 2.0, 1.0]] == ["improved", "improved", "stop"]
    s2 = PlateauSchedule(max_epochs=10)
    s2.update(1.0)
    s2.update(2.0)
    copy = PlateauSchedule.from_state(s2.state_dict())
    assert copy.update(2.0) == s2.update(2.0) == "reduce"


class KernelArray(numpy.ndarray):
    """Host arrays of a module that offers ``ElementwiseKernel`` (as CuPy does)."""


def _elementwise_kernel(in_params, out_params, operation, name):
    """Run a CuPy-style elementwise kernel body with NumPy: the statements of
    the fused Adam are valid Python once ``sqrt`` is NumPy's."""
    names = [p.split()[-1] for p in (in_params + "," + out_params).split(",")]
    n_out = len(out_params.split(","))

    def run(*args):
        env = dict(zip(names, args), sqrt=numpy.sqrt)
        for statement in filter(str.strip, operation.split(";")):
            exec(statement.strip(), {}, env)
        for name, array in zip(names[-n_out:], args[-n_out:]):
            array[...] = env[name]
    return run


def test_fused_kernel_computes_the_same_update_as_the_chunked_path():
    import types
    kernel_module = types.SimpleNamespace(ElementwiseKernel=_elementwise_kernel, zeros_like=numpy.zeros_like)
    backend.register_array_type(KernelArray, kernel_module)
    rng = backend.rng(2)
    start = rng.normal(size=(4, 6))
    grads = [rng.normal(size=(4, 6)) for _ in range(3)]
    fused = start.copy().view(KernelArray)
    plain = start.copy()
    adam_fused, adam_plain = Adam([fused], lr=0.01), Adam([plain], lr=0.01)
    assert backend.array_module(fused) is kernel_module
    for g in grads:
        adam_fused.step([g.view(KernelArray)])
        adam_plain.step([g])
    numpy.testing.assert_allclose(numpy.asarray(fused), plain, rtol=1e-14)
    numpy.testing.assert_allclose(numpy.asarray(adam_fused.v[0]), adam_plain.v[0], rtol=1e-14)


def test_moments_of_dead_units_never_turn_subnormal(xp_module):
    """A parameter whose gradient is exactly zero (a dead ReLU unit) has its
    moments decay geometrically; they are flushed before leaving the normal
    float32 range, where a CPU would slow down several-fold."""
    p = backend.to_device(numpy.ones(3, dtype=numpy.float32), xp_module)
    adam = Adam([p])
    adam.step([backend.to_device(numpy.array([1e-3, 0.5, 1.0], dtype=numpy.float32), xp_module)])
    zero = backend.to_device(numpy.zeros(3, dtype=numpy.float32), xp_module)
    tiny = numpy.finfo(numpy.float32).tiny
    for _ in range(1500):
        adam.step([zero])
        for moment in (adam.m[0], adam.v[0]):
            host = numpy.abs(backend.to_host(moment))
            assert not ((host > 0) & (host < tiny)).any()
    assert not backend.to_host(adam.m[0]).any()  # 0.9^1500: flushed to zero, not subnormal
