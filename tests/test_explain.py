"""Loading one's own network and frames (nca_np.explain)."""

import numpy
import pytest

from nca_np import explain
from nca_np.errors import UserError
from nca_np.explain import (
    NetworkError,
    check_frames,
    layers_from_state_dict,
    load_frames,
    load_network,
    network_model,
)
from nca_np.models import MODEL_KINDS

F = 6


def random_layers(n_layers, seed=0, n_freq=F):
    rng = numpy.random.default_rng(seed)
    return [(rng.normal(size=(n_freq, n_freq)), rng.normal(size=n_freq)) for _ in range(n_layers)]


def hand_forward(layers, X_columns, masks_input=False):
    """``h_l = max(W_l h + b_l, 0)`` on frames as columns, written out here."""
    h = X_columns
    for W, b in layers:
        h = numpy.maximum(W @ h + b[:, None], 0.0)
    return X_columns * h if masks_input else h


def save_npz(path, layers, first=1, **extra):
    arrays = {}
    for number, (W, b) in enumerate(layers, start=first):
        arrays[f"W{number}"], arrays[f"b{number}"] = W, b
    numpy.savez(path, **arrays, **extra)
    return path


def frames(seed=1, T=9):
    return numpy.abs(numpy.random.default_rng(seed).normal(size=(F, T)))


@pytest.mark.parametrize("n_layers, masks_input, kind", [(2, False, "dae"), (4, False, "mss-dae"),
                                                          (2, True, "sf")])
def test_an_npz_network_predicts_what_its_layers_compute_by_hand(tmp_path, n_layers, masks_input, kind):
    layers = random_layers(n_layers)
    extra = {"masks_input": numpy.bool_(True)} if masks_input else {}
    model = load_network(save_npz(tmp_path / "net.npz", layers, **extra), dtype=numpy.float64)
    X = frames()
    assert model.kind == kind and model.n_freq == F and model.dtype == numpy.float64
    expected = hand_forward(layers, X, masks_input)
    assert numpy.abs(expected).max() > 0.5  # the check is not on an all-zero output
    numpy.testing.assert_allclose(model.predict(X.T).T, expected, rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(model.decoder_output(X.T).T, hand_forward(layers, X), rtol=1e-12, atol=1e-12)


def test_numbering_from_zero_reads_the_same_network_and_float32_is_the_default(tmp_path):
    layers = random_layers(2, seed=4)
    one = load_network(save_npz(tmp_path / "one.npz", layers, first=1))
    zero = load_network(save_npz(tmp_path / "zero.npz", layers, first=0))
    assert one.dtype == numpy.float32
    for a, b in zip(one.params, zero.params):
        numpy.testing.assert_array_equal(a, b)


def test_the_mask_flag_can_be_given_and_must_agree_with_the_file(tmp_path):
    path = save_npz(tmp_path / "net.npz", random_layers(2))
    assert load_network(path, masks_input=True).kind == "sf"
    flagged = save_npz(tmp_path / "flagged.npz", random_layers(2), masks_input=numpy.bool_(False))
    with pytest.raises(NetworkError, match="masks_input key says False"):
        load_network(flagged, masks_input=True)


@pytest.fixture
def registry_restored():
    """The registry of model kinds as it was before the test."""
    before = dict(MODEL_KINDS)
    yield
    MODEL_KINDS.clear()
    MODEL_KINDS.update(before)


def test_another_depth_registers_a_kind_of_its_own(tmp_path, registry_restored):
    layers = random_layers(3, seed=2)
    model = load_network(save_npz(tmp_path / "net3.npz", layers), dtype=numpy.float64)
    assert model.kind == "network-3" and MODEL_KINDS["network-3"].n_layers == 3
    X = frames()
    numpy.testing.assert_allclose(model.predict(X.T).T, hand_forward(layers, X), rtol=1e-12, atol=1e-12)
    assert load_network(save_npz(tmp_path / "again.npz", layers)).kind == "network-3"  # registered once


def one_line_error(call, *needles):
    with pytest.raises(NetworkError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, UserError)
    for needle in needles:
        assert needle in message, message
    return message


def test_a_planted_shape_error_is_one_line_naming_the_layer(tmp_path):
    layers = random_layers(2)
    layers[1] = (numpy.ones((F + 1, F + 1)), numpy.ones(F + 1))
    path = save_npz(tmp_path / "bad.npz", layers)
    one_line_error(lambda: load_network(path), str(path), "layer 2", "7×7", "do not chain")


@pytest.mark.parametrize("plant, needles", [
    (lambda a: a.update(W1=numpy.ones((F, F + 2))), ("layer 1", "square")),
    (lambda a: a.update(b2=numpy.ones(F + 1)), ("layer 2's bias", f"({F},)")),
    (lambda a: a.pop("b2"), ("layer 2 has no bias", "b2")),
    (lambda a: a.pop("W1"), ("layer 1 has no weight",)),
    (lambda a: a["W2"].__setitem__((0, 0), numpy.nan), ("layer 2's weight", "1 NaN")),
    (lambda a: a.update(W4=numpy.eye(F), b4=numpy.zeros(F)), ("numbered [1, 2, 4]",)),
    (lambda a: a.update(weights=numpy.eye(F)), ("unexpected key(s) weights",)),
    (lambda a: a.update(masks_input=numpy.ones(3)), ("single boolean",)),
])
def test_bad_weights_are_one_clear_line(tmp_path, plant, needles):
    arrays = {}
    for number, (W, b) in enumerate(random_layers(2), start=1):
        arrays[f"W{number}"], arrays[f"b{number}"] = W, b
    plant(arrays)
    path = tmp_path / "bad.npz"
    numpy.savez(path, **arrays)
    one_line_error(lambda: load_network(path), *needles)


def test_missing_and_unreadable_network_files(tmp_path):
    one_line_error(lambda: load_network(tmp_path / "none.npz"), "not found")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip archive")
    one_line_error(lambda: load_network(broken), "not a readable NumPy .npz")


def test_a_state_dict_of_linear_layers_maps_weight_and_bias_in_order():
    """The mapping logic on a plain dict of arrays, as torch.load returns
    tensors: an nn.Sequential(Linear, ReLU, Linear, ReLU) has keys 0.* and 2.*."""
    layers = random_layers(2, seed=3)
    state = {"0.weight": layers[0][0], "0.bias": layers[0][1], "2.weight": layers[1][0], "2.bias": layers[1][1]}
    read = layers_from_state_dict(state)
    model = network_model(read, dtype=numpy.float64)
    X = frames()
    numpy.testing.assert_allclose(model.predict(X.T).T, hand_forward(layers, X), rtol=1e-12, atol=1e-12)
    # nn.Linear computes x Wᵀ + b on rows: the same numbers as the model
    numpy.testing.assert_allclose(model.predict(X.T), numpy.maximum(
        numpy.maximum(X.T @ layers[0][0].T + layers[0][1], 0) @ layers[1][0].T + layers[1][1], 0), rtol=1e-12)


def test_bad_state_dicts_are_one_clear_line():
    W, b = numpy.eye(F), numpy.zeros(F)
    one_line_error(lambda: layers_from_state_dict({"0.weight": W}), "'0' has no bias", "bias=True")
    one_line_error(lambda: layers_from_state_dict({"0.weight": W, "0.bias": b, "1.running_mean": b}),
                   "'1.running_mean'", "Linear")
    one_line_error(lambda: network_model(layers_from_state_dict(
        {"enc.weight": numpy.ones((4, F)), "enc.bias": numpy.zeros(4)})), "square")


def test_without_torch_a_state_dict_file_asks_for_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    path = tmp_path / "net.pt"
    path.write_bytes(b"\x80\x02}q\x00.")
    one_line_error(lambda: load_network(path), "needs PyTorch", "pip install torch")


def test_a_torch_state_dict_file_loads_when_torch_is_installed(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(F, F), torch.nn.ReLU(), torch.nn.Linear(F, F), torch.nn.ReLU()).double()
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    model = load_network(path, dtype=numpy.float64)
    X = frames()
    with torch.no_grad():
        expected = net(torch.from_numpy(X.T.copy())).numpy()
    assert model.kind == "dae"
    numpy.testing.assert_allclose(model.predict(X.T), expected, rtol=1e-12, atol=1e-12)


def test_frames_load_as_float64_columns(tmp_path):
    X = frames().astype(numpy.float32)
    numpy.save(tmp_path / "x.npy", X)
    loaded = load_frames(tmp_path / "x.npy", n_freq=F)
    assert loaded.dtype == numpy.float64 and loaded.shape == (F, 9)
    numpy.testing.assert_array_equal(loaded, X.astype(numpy.float64))


@pytest.mark.parametrize("array, needles", [
    (frames().T, ("9 rows", f"F = {F}", "transposed")),
    (frames()[0], ("expected a non-empty (F, T)",)),
    (numpy.zeros((F, 0)), ("non-empty",)),
    (-frames(), ("negative entries",)),
    (numpy.where(numpy.eye(F, 9) > 0, numpy.inf, frames()), (f"{F} NaN or infinite",)),
])
def test_bad_frames_are_one_clear_line(tmp_path, array, needles):
    path = tmp_path / "x.npy"
    numpy.save(path, array)
    one_line_error(lambda: load_frames(path, n_freq=F), *needles)


def test_missing_or_wrong_kind_of_frames_file(tmp_path):
    one_line_error(lambda: load_frames(tmp_path / "none.npy"), "not found")
    numpy.savez(tmp_path / "x.npz", a=frames())
    one_line_error(lambda: load_frames(tmp_path / "x.npz"), "several arrays")
    assert check_frames(frames(), n_freq=None).shape == (F, 9)



# ------------------------------------------------------------------ nca-np explain

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from nca_np.couplings import NcaSettings  # noqa: E402
from nca_np.explain import EXPLAIN_FILES  # noqa: E402
from nca_np.train import FINAL_MODEL, load_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.toml"
#: The kinds the reproduction covers: a direct network and a mask network.
EXPLAINED_KINDS = ("dae", "sf")


def nca_np(*args, check=True):
    """``python -m nca_np ARGS`` on the CPU; the completed process."""
    env = dict(os.environ, PYTHONPATH=str(REPO), NCA_NP_BACKEND="numpy")
    result = subprocess.run([sys.executable, "-m", "nca_np", *map(str, args), "--quiet"], capture_output=True,
                            text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def tiny_units(tmp_path_factory):
    """The tiny profile trained and explained by the couplings stage (DAE
    and SF only), through the command line: ``{kind: (unit, run folder,
    Figure 3 arrays of its segment s0000)}``."""
    workdir = tmp_path_factory.mktemp("tiny")
    common = ["--profile", TINY, "--workdir", workdir]
    nca_np("prepare", *common)
    nca_np("train", *common, "--kinds", *EXPLAINED_KINDS)
    nca_np("couplings", *common, "--kinds", *EXPLAINED_KINDS)
    found = {}
    for kind in EXPLAINED_KINDS:
        (unit_path,) = sorted((workdir / "couplings").glob(f"tiny-*/{kind}/s0000.json"))
        unit = json.loads(unit_path.read_text())
        (run_dir,) = sorted((workdir / "runs").glob(f"tiny-*/{kind}/run_{unit['run']:02d}"))
        with numpy.load(unit_path.with_suffix(".npz")) as arrays:
            found[kind] = (unit, run_dir, {key: arrays[key] for key in ("mixture", "vocals")})
    return found


def save_run_as_npz(run_dir, path, masks_input):
    """A trained run's weights in explain's format: W1, b1, …, W (out, in)."""
    model = load_model(run_dir / FINAL_MODEL, module=numpy)[0]
    arrays = {}
    for number in range(model.n_layers):
        arrays[f"W{number + 1}"], arrays[f"b{number + 1}"] = model.params[2 * number], model.params[2 * number + 1]
    numpy.savez(path, **arrays, **({"masks_input": numpy.bool_(True)} if masks_input else {}))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", EXPLAINED_KINDS)
def test_explain_reproduces_a_couplings_unit_of_the_trained_tiny_profile(tiny_units, tmp_path, kind):
    """Weights saved from a trained run, the frames of its segment and the
    unit's init seed: ``nca-np explain`` gives that unit's numbers exactly
    (the same float32 arithmetic in the same order, bit for bit)."""
    unit, run_dir, arrays = tiny_units[kind]
    weights = save_run_as_npz(run_dir, tmp_path / "net.npz", masks_input=kind == "sf")
    numpy.save(tmp_path / "frames.npy", arrays["mixture"])
    numpy.save(tmp_path / "vocals.npy", arrays["vocals"])
    (seed,) = {fit["init_seed"] for fit in unit["strategies"].values()}
    out = tmp_path / "explained"
    done = nca_np("explain", weights, "--frames", tmp_path / "frames.npy", "--vocals", tmp_path / "vocals.npy",
                  "--profile", TINY, "--init-seed", seed, "--out", out)
    assert f"explanation written to {out / 'explain.md'}" in done.stdout
    explained = json.loads((out / EXPLAIN_FILES["numbers"]).read_text())
    assert explained["kind"] == kind and set(explained["strategies"]) == set(unit["strategies"])
    for strategy, fit in unit["strategies"].items():
        mine = explained["strategies"][strategy]
        for key in ("tod_r", "snr_model_db", "snr_true_db", "relative_error", "losses", "iterations", "converged"):
            assert mine[key] == fit[key], (strategy, key)
    assert explained["baselines"] == unit["baselines"]
    assert explained["model_snr_true_db"] == unit["model_snr_true_db"]
    for reference in ("min_norm", "mean_local_map", "nearest_identity"):
        assert explained["references"][reference] == unit["references"][reference], reference
    report = (out / EXPLAIN_FILES["report"]).read_text()
    for title in ("## Table 1", "## Table 2", "## Table 3", "## Exact references", "## Convergence of the NCA"):
        assert title in report, title
    student = unit["strategies"]["student"]["tod_r"]
    assert f"| {'DAE' if kind == 'dae' else 'SF'} | 1 | {student:.2f} (0.00) |" in report
    assert (out / EXPLAIN_FILES["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_from_python_leaves_out_the_truth_without_vocals(tmp_path):
    layers = random_layers(2, seed=4)
    model = network_model(layers)
    settings = NcaSettings(iterations=6, max_iterations=6, learning_rate=1e-3)
    unit = explain.explain(model, frames(T=12), settings, tmp_path, init_seed=5, dpi=20)
    again = explain.explain(model, frames(T=12), settings, tmp_path / "again", init_seed=5, dpi=20)
    assert [fit["tod_r"] for fit in unit["strategies"].values()] == \
        [fit["tod_r"] for fit in again["strategies"].values()]  # seeded
    assert unit["model_snr_true_db"] is None and all(f["snr_true_db"] is None for f in unit["strategies"].values())
    assert unit["references"]["n_freq"] == F and unit["segment"]["frames"] == 12
    text = (tmp_path / EXPLAIN_FILES["report"]).read_text()
    assert "## Table 3" not in text and "Table 3 (SNR against the true vocals) is left out" in text
    assert "[TOD-R](docs/method.md#glossary-tod-r)" in text


def test_explain_with_a_planted_shape_error_fails_in_one_line(tmp_path):
    layers = random_layers(2)
    layers[1] = (numpy.ones((F, F + 1)), numpy.ones(F))
    weights = save_npz(tmp_path / "bad.npz", layers)
    numpy.save(tmp_path / "frames.npy", frames())
    done = nca_np("explain", weights, "--frames", tmp_path / "frames.npy", "--profile", TINY, "--out",
                  tmp_path / "out", check=False)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("nca-np explain: error: ") and str(weights) in line and "layer 2" in line
    assert "square" in line and not (tmp_path / "out").exists()


def test_explain_with_frames_of_the_wrong_size_fails_in_one_line(tmp_path):
    weights = save_npz(tmp_path / "net.npz", random_layers(2))
    numpy.save(tmp_path / "frames.npy", frames().T)
    done = nca_np("explain", weights, "--frames", tmp_path / "frames.npy", "--profile", TINY, "--out",
                  tmp_path / "out", check=False)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "transposed?" in done.stderr


def test_the_command_line_lists_explain_and_the_tiny_profile():
    from nca_np.cli import build_parser

    parser = build_parser()
    assert "explain" in parser.format_help()
    commands = next(action for action in parser._actions if getattr(action, "choices", None)
                    and "reproduce" in action.choices).choices
    profile_help = commands["reproduce"].format_help()
    assert "tiny" in profile_help and "about 15 s" in profile_help
    explain_help = commands["explain"].format_help()
    for needle in ("--frames", "--vocals", "--init-seed", "frames as columns", "input domain"):
        assert needle in explain_help, needle
    args = parser.parse_args(["explain", "net.npz", "--frames", "f.npy"])
    assert args.out == Path("explained") and args.init_seed is None and args.vocals is None
