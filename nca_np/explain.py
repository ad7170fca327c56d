"""Loading one's own network and frames, to explain them with the NCA.

The NCA (docs/method.md#nca)
explains any chain of ``F×F`` dense + ReLU layers, not only the networks this
project trains. This module reads such a network from a file into a
:class:`nca_np.models.Model`, and a segment of frames to explain it on,
checking both before any fit starts; every problem is one line
(:class:`NetworkError`, a :class:`~nca_np.errors.UserError`).

**The network** (:func:`load_network`) computes, for a frame ``x`` (a column
of F non-negative magnitudes),

.. math::
    h_0 = x,   h_l = max(W_l h_{l−1} + b_l, 0)  (l = 1 … L),   v = h_L,
    ŷ = v  or, for a mask network (skip filtering, the SF kind),  ŷ = x ⊙ v

with every ``W_l`` of shape ``(F, F)`` = (out, in) and every ``b_l`` of
shape ``(F,)``: the layout of docs/method.md#models, a ReLU after
*every* layer, the last included. Two file formats:

- NumPy ``.npz`` (``numpy.savez``): keys ``W1, b1, W2, b2, …, WL, bL``,
  encoder first, numbered from 1 as in docs/method.md (numbering from 0,
  ``W0, b0, …``, is read too); ``W_l`` of shape (out, in). An optional
  key ``masks_input`` (a 0-d boolean, ``numpy.savez(..., masks_input=True)``)
  declares a mask network. Any other key is an error, so that a misnamed
  layer is never silently left out. A network written with frames as rows,
  ``h W + b`` with ``W`` of shape (in, out), is saved with ``W.T``.
- PyTorch ``state_dict`` (``torch.save(net.state_dict(), path)``, any
  suffix other than ``.npz``; read only when PyTorch is installed): the
  ``*.weight`` (out, in) and ``*.bias`` of consecutive ``torch.nn.Linear``
  layers, in the order of the dict (the order the layers were declared, as
  in an ``nn.Sequential`` of Linear and ReLU modules). ``nn.Linear`` computes
  ``x Wᵀ + b`` on frames as rows: the same ``W`` as above, no transpose.
  A ``state_dict`` says nothing of the activations: the ReLU after every
  layer is an assumption the file cannot check.

The loaded model takes the registered kind of the same shape (``dae`` for
two layers, ``mss-dae`` for four, ``sf`` for two with a mask: a kind is
nothing but its number of layers and whether it masks its input); another
shape registers a kind ``network-L`` (``network-L-mask``) on first load.

**The frames** (:func:`load_frames`): a ``.npy`` of shape (F, T), frames as
columns, as the NCA takes them (docs/method.md#nca): the network's
own input features (scaled as the network was trained on them), finite and
non-negative.

**The explanation** (:func:`explain`, ``nca-np explain WEIGHTS --frames
FRAMES.npy``): the couplings stage's fits of one segment
(:func:`nca_np.couplings.fit_unit`: every NCA strategy of the settings, the
baselines, the exact references) on the given frames, written as the
report's NCA sections for one model: Tables 1–2 (and 3 when the true
vocals of the frames are given), the exact references, the convergence of
the fits and the couplings figure. The frames are taken in the model's
own feature domain: for a network of this project, the band-scaled
magnitudes of docs/method.md#features, as the couplings stage takes them;
no scaling is applied here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy

from . import backend
from .atomic import write_json, write_text
from .couplings import fit_unit
from .errors import UserError
from .models import MODEL_KINDS, Model, ModelKind, model_kind, register_kind
from .report import diagnostics as nca_diagnostics
from .report.figures import DPI, plot_couplings
from .report.prose import table_caption, with_symbols
from .report.tables import DECIMALS, TABLE1, TABLE2, TABLE3, markdown_table, summarise
from .workspace import code_version


class NetworkError(UserError, ValueError):
    """A network or frames file that cannot be explained as it is."""


#: The npz key of a weight or bias: letter, layer number.
_LAYER_KEY = re.compile(r"^([Wb])(\d+)$")
#: The npz key declaring a mask network.
MASK_KEY = "masks_input"
#: Suffix of the NumPy format; any other file is read as a PyTorch state_dict.
NPZ_SUFFIX = ".npz"


# ------------------------------------------------------------------ network


def load_network(path, *, masks_input: bool | None = None, dtype=numpy.float32, module=None) -> Model:
    """Read a chain of ``F×F`` dense + ReLU layers into a :class:`Model`.

    Args:
        path: a ``.npz`` file (keys ``W1, b1, …``) or a PyTorch
            ``state_dict`` file (see the module's docstring).
        masks_input: True for a mask network (``ŷ = x ⊙ v``); None takes the
            file's ``masks_input`` key (``.npz``) or False.
        dtype: the model's dtype (float32, as the project's trained models).
        module: array module of the parameters (default ``backend.xp()``).

    Returns:
        A :class:`Model` whose ``params`` are ``[W_1, b_1, …, W_L, b_L]``.

    Raises:
        NetworkError: one line naming the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise NetworkError(f"network file {path} not found")
    if path.suffix.lower() == NPZ_SUFFIX:
        arrays, file_mask = _read_npz(path)
        layers = layers_from_npz(arrays, where=str(path))
    else:
        file_mask = None
        layers = layers_from_state_dict(_read_state_dict(path), where=str(path))
    if masks_input is not None and file_mask is not None and bool(masks_input) != file_mask:
        raise NetworkError(f"{path}: its {MASK_KEY} key says {file_mask}, but masks_input={masks_input} was asked for")
    mask = bool(masks_input) if masks_input is not None else bool(file_mask)
    return network_model(layers, masks_input=mask, dtype=dtype, module=module, where=str(path))


def _read_npz(path: Path) -> tuple[dict, bool | None]:
    """The arrays of an ``.npz`` and its mask flag (None when absent)."""
    try:
        with numpy.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError) as exc:
        raise NetworkError(f"{path}: not a readable NumPy .npz archive ({exc})") from None
    if MASK_KEY not in arrays:
        return arrays, None
    flag = arrays.pop(MASK_KEY)
    if flag.shape != () or flag.dtype.kind not in "bi" or int(flag) not in (0, 1):
        raise NetworkError(f"{path}: key {MASK_KEY!r} must be a single boolean, got {flag.dtype} of shape {flag.shape}")
    return arrays, bool(flag)


def layers_from_npz(arrays: dict, *, where: str = "the archive") -> list:
    """``[(W_1, b_1), …]`` from arrays keyed ``W1, b1, …`` (or ``W0, b0, …``).

    Raises:
        NetworkError: unknown keys, a gap in the numbering, a missing bias
            or weight.
    """
    unknown = sorted(key for key in arrays if not _LAYER_KEY.match(key))
    if unknown:
        raise NetworkError(f"{where}: unexpected key(s) {', '.join(unknown)}: expected W1, b1, W2, b2, … "
                           f"(and optionally {MASK_KEY})")
    numbers = sorted({int(_LAYER_KEY.match(key).group(2)) for key in arrays})
    if not numbers:
        raise NetworkError(f"{where}: no layers: expected keys W1, b1, W2, b2, …")
    first = numbers[0]
    if first not in (0, 1) or numbers != list(range(first, first + len(numbers))):
        raise NetworkError(f"{where}: layers numbered {numbers}: number them 1, 2, …, L (or 0, 1, …) without gaps")
    layers = []
    for number in numbers:
        for letter in "Wb":
            if f"{letter}{number}" not in arrays:
                what = "bias" if letter == "b" else "weight"
                raise NetworkError(f"{where}: layer {number} has no {what} (key {letter}{number}): "
                                   "every layer needs both W and b")
        layers.append((arrays[f"W{number}"], arrays[f"b{number}"]))
    return layers


def _read_state_dict(path: Path) -> dict:
    """A PyTorch ``state_dict`` read on the CPU (PyTorch imported only here)."""
    try:
        import torch
    except ImportError:
        raise NetworkError(f"{path} is not a .npz archive and reading a PyTorch state_dict needs PyTorch: "
                           "install it (pip install torch) or save the weights with numpy.savez") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file it cannot read
        raise NetworkError(f"{path}: not a PyTorch state_dict torch.load can read safely "
                           f"(save net.state_dict(), not the module): {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise NetworkError(f"{path}: holds a {type(state).__name__}, not a state_dict (save net.state_dict())")
    return state


def _host_array(value):
    """A tensor (PyTorch) or array as a NumPy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if hasattr(value, "float") and str(getattr(value, "dtype", "")) == "torch.bfloat16":
            value = value.float()  # NumPy has no bfloat16
        value = value.numpy()
    return numpy.asarray(value)


def layers_from_state_dict(state: dict, *, where: str = "the state_dict") -> list:
    """``[(W_1, b_1), …]`` from ``*.weight`` / ``*.bias`` pairs, in dict order.

    Each prefix (the key without ``.weight`` / ``.bias``) is one
    ``nn.Linear`` layer; its ``weight`` is (out, in), the model's layout.
    Works on tensors and on plain NumPy arrays alike.

    Raises:
        NetworkError: a key of another kind of layer, a missing bias.
    """
    prefixes, pairs = [], {}
    for key, value in state.items():
        prefix, _, name = str(key).rpartition(".")
        if name not in ("weight", "bias") or not prefix:
            raise NetworkError(f"{where}: key {key!r} is not the weight or bias of a Linear layer: "
                               "only a chain of Linear layers (and parameter-free ReLUs) can be read")
        if prefix not in pairs:
            prefixes.append(prefix)
            pairs[prefix] = {}
        pairs[prefix][name] = _host_array(value)
    if not prefixes:
        raise NetworkError(f"{where}: no layers in the state_dict")
    for prefix in prefixes:
        for name in ("weight", "bias"):
            if name not in pairs[prefix]:
                raise NetworkError(f"{where}: layer {prefix!r} has no {name} ({prefix}.{name}): every layer "
                                   "needs both (nn.Linear(..., bias=True))")
    return [(pairs[p]["weight"], pairs[p]["bias"]) for p in prefixes]


def check_layers(layers, *, where: str = "the network") -> int:
    """Check ``[(W_l, b_l)]`` form a chain of ``F×F`` layers; returns F.

    Raises:
        NetworkError: a weight that is not 2-D or not square, layers whose
            sizes do not chain, a bias of the wrong shape, a non-finite or
            non-numeric entry.
    """
    n_freq = None
    for number, (W, b) in enumerate(layers, start=1):
        for name, array in (("weight", W), ("bias", b)):
            if array.dtype.kind not in "fiu":
                raise NetworkError(f"{where}: layer {number}'s {name} has dtype {array.dtype}: expected real numbers")
            if not numpy.isfinite(array).all():
                raise NetworkError(f"{where}: layer {number}'s {name} has {int((~numpy.isfinite(array)).sum())} "
                                   "NaN or infinite entries")
        if W.ndim != 2 or W.shape[0] != W.shape[1]:
            raise NetworkError(f"{where}: layer {number}'s weight has shape {tuple(W.shape)}: the NCA needs "
                               "square F×F layers (as many outputs as input bins)")
        if n_freq is not None and W.shape[1] != n_freq:
            raise NetworkError(f"{where}: layer {number}'s weight is {W.shape[0]}×{W.shape[1]} but layer "
                               f"{number - 1} outputs {n_freq} values: the layers do not chain")
        n_freq = int(W.shape[0])
        if b.shape != (n_freq,):
            raise NetworkError(f"{where}: layer {number}'s bias has shape {tuple(b.shape)}, not ({n_freq},)")
    if n_freq is None or n_freq < 2:
        raise NetworkError(f"{where}: {'no layers' if n_freq is None else 'F = 1 bin'}: the NCA needs F ≥ 2 bins")
    return n_freq


def kind_for(n_layers: int, masks_input: bool) -> str:
    """The registered kind with ``n_layers`` layers and this mask flag; a
    kind ``network-L`` (``network-L-mask``) is registered when none has."""
    for spec in MODEL_KINDS.values():
        if spec.n_layers == n_layers and spec.masks_input == masks_input:
            return spec.name
    name = f"network-{n_layers}" + ("-mask" if masks_input else "")
    display = f"{n_layers}-layer network" + (" (mask)" if masks_input else "")
    return register_kind(ModelKind(name, n_layers, masks_input, display, "loaded network")).name


def network_model(layers, *, masks_input: bool = False, dtype=numpy.float32, module=None,
                  where: str = "the network") -> Model:
    """A :class:`Model` of checked ``[(W_l, b_l)]`` layers (see :func:`check_layers`)."""
    layers = [(_host_array(W), _host_array(b)) for W, b in layers]
    check_layers(layers, where=where)
    module = module if module is not None else backend.xp()
    params = []
    for W, b in layers:
        params.append(backend.to_device(numpy.array(W, dtype=dtype), module))
        params.append(backend.to_device(numpy.array(b, dtype=dtype), module))
    return Model(kind_for(len(layers), bool(masks_input)), params)


# ------------------------------------------------------------------- frames


def load_frames(path, *, n_freq: int | None = None):
    """Read a segment of frames to explain a network on.

    Args:
        path: a ``.npy`` file holding an (F, T) array, frames as columns.
        n_freq: the network's F, when known: the frames must have F rows.

    Returns:
        (F, T) float64 host array.

    Raises:
        NetworkError: a missing or unreadable file, an array that is not
            2-D, empty, non-numeric, non-finite or negative, or has the
            wrong number of bins (with a hint when it is transposed).
    """
    path = Path(path)
    if not path.is_file():
        raise NetworkError(f"frames file {path} not found")
    try:
        frames = numpy.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise NetworkError(f"{path}: not a readable NumPy .npy array ({exc})") from None
    if not isinstance(frames, numpy.ndarray):
        frames.close()
        raise NetworkError(f"{path}: holds several arrays (an .npz?): save one (F, T) array with numpy.save")
    return check_frames(frames, n_freq=n_freq, where=str(path))


def check_frames(frames, *, n_freq: int | None = None, where: str = "the frames"):
    """Validate an (F, T) segment (see :func:`load_frames`); returns it as float64."""
    if frames.dtype.kind not in "fiu":
        raise NetworkError(f"{where}: dtype {frames.dtype}: expected real magnitudes")
    if frames.ndim != 2 or 0 in frames.shape:
        raise NetworkError(f"{where}: shape {tuple(frames.shape)}: expected a non-empty (F, T) array, "
                           "frames as columns")
    if n_freq is not None and frames.shape[0] != n_freq:
        hint = " (transposed? save frames as columns: array.T)" if frames.shape[1] == n_freq else ""
        raise NetworkError(f"{where}: shape {tuple(frames.shape)} has {frames.shape[0]} rows but the network "
                           f"has F = {n_freq} bins{hint}")
    if not numpy.isfinite(frames).all():
        raise NetworkError(f"{where}: {int((~numpy.isfinite(frames)).sum())} NaN or infinite entries")
    if (frames < 0).any():
        raise NetworkError(f"{where}: {int((frames < 0).sum())} negative entries: the NCA explains "
                           "non-negative magnitude frames (docs/method.md#features)")
    return numpy.asarray(frames, dtype=numpy.float64)


# ------------------------------------------------------------------ explain

#: The files :func:`explain` writes into its folder.
EXPLAIN_FILES = {"report": "explain.md", "numbers": "explain.json", "figure": "couplings.png"}


def explain(model: Model, frames, settings, out_dir, *, vocals=None, init_seed: int = 0, spread_seeds=(),
            sample_rate: float = 44100.0, watch=None, dpi: int | None = None) -> dict:
    """Explain ``model`` on one segment of ``frames`` with the NCA and write
    the report's NCA sections for it (docs/method.md#nca).

    Args:
        model: the network (:func:`load_network`, or a trained run's model).
        frames: (F, T) host array, frames as columns, in the model's own
            feature domain (for this project's networks, the band-scaled
            magnitudes of docs/method.md#features); taken in the model's dtype.
        settings: :class:`nca_np.couplings.NcaSettings` (strategies,
            iterations, learning rate, composition, …).
        out_dir: the folder of :data:`EXPLAIN_FILES` (created when missing).
        vocals: (F, T) true vocals of the same frames, or None: then the
            SNRs against the truth (Table 3) are left out.
        init_seed: the seed of each strategy's fit (a couplings unit's
            ``init_seed`` reproduces that unit's fits).
        spread_seeds: seeds of extra fits, for the spread over initialisations.
        sample_rate: Hz of the frames' STFT, for the figure's axes (bin k
            at ``k · sample_rate / (2 (F − 1))``).
        watch: as for :func:`nca_np.couplings.fit_unit`.

    Returns:
        The unit: ``{"kind", "segment", "strategies", "baselines",
        "references", "model_snr_true_db", "init_seed", …}`` as the couplings
        stage writes it (``snr_true_db`` None without ``vocals``).
    """
    frames = check_frames(backend.to_host(frames), n_freq=model.n_freq, where="the frames")
    dtype = numpy.dtype(model.dtype)
    module = backend.array_module(model.params[0])
    mixture = backend.to_device(numpy.asarray(frames, dtype=dtype), module)
    truth = vocals is not None
    if truth:
        vocals = numpy.asarray(backend.to_host(vocals), dtype=dtype)
        if vocals.shape != frames.shape:
            raise NetworkError(f"the vocals have shape {vocals.shape}, the frames {frames.shape}: give one true "
                               "vocals frame per frame")
        target = backend.to_device(vocals, module)
    else:  # fit_unit measures against the truth too: the model's output stands in, and is dropped below
        target = model.predict(mixture.T).T
    measures, matrices = fit_unit(settings, model, mixture, target, init_seed=init_seed,
                                  spread_seeds=tuple(spread_seeds), watch=watch)
    unit = {"kind": model.kind, "model": model_kind(model.kind).display_name,
            "segment": {"id": "explained", "number": 0, "track": "given frames", "index": 0,
                        "frames": int(frames.shape[1])},
            "run": None, "config_hash": "explain", "code_version": code_version(),
            "composition": settings.composition, "init_seed": int(init_seed), **measures,
            "frames_domain": "the model's own input features (frames as columns), as given"}
    if not truth:
        unit["model_snr_true_db"] = None
        for entry in unit["strategies"].values():
            entry["snr_true_db"] = None
    _write_explanation(Path(out_dir), unit, settings, matrices, model, mixture, truth=truth,
                       sample_rate=sample_rate, dpi=dpi)
    return unit


def _write_explanation(out_dir: Path, unit: dict, settings, matrices: dict, model, mixture, *, truth: bool,
                       sample_rate: float, dpi) -> None:
    """explain.json, explain.md and couplings.png of one explained model."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / EXPLAIN_FILES["numbers"], unit)
    write_text(out_dir / EXPLAIN_FILES["report"], explanation_markdown(unit, settings, truth=truth))
    _write_figure(out_dir / EXPLAIN_FILES["figure"], unit, settings, matrices, model, mixture,
                  sample_rate=sample_rate, dpi=dpi)


def explanation_markdown(unit: dict, settings, *, truth: bool) -> str:
    """The report's NCA sections (Tables 1–3, exact references, convergence)
    for the one explained unit, with the report's own renderers."""
    kinds, strategies = [unit["kind"]], list(settings.strategies)
    scored = json.loads(json.dumps(unit))
    if not truth:  # the tables take numbers: NaN, and Table 3 is left out below
        scored["model_snr_true_db"] = float("nan")
        for entry in scored["strategies"].values():
            entry["snr_true_db"] = float("nan")
    tables = summarise([scored], kinds=kinds, strategies=strategies)
    diagnostics = nca_diagnostics.diagnose([scored], kinds=kinds, strategies=strategies)
    refs = unit["references"]
    sections = [f"# NCA explanation of a {unit['model']} network\n",
                f"One segment of {unit['segment']['frames']} frames (F = {refs['n_freq']} bins, rank X = "
                f"{refs['rank']}), taken as the network's own input features; strategies "
                f"{', '.join(strategies)}, {settings.iterations} iterations at learning rate "
                f"{settings.learning_rate:g}, init seed {unit['init_seed']}, composition "
                f"{settings.composition!r}. Numbers: [{EXPLAIN_FILES['numbers']}]({EXPLAIN_FILES['numbers']}).\n"]
    if not truth:
        sections.append("*Table 3 (SNR against the true vocals) is left out: no true vocals were given for "
                        "these frames (--vocals).*\n")
    note = nca_diagnostics.measurement_note(diagnostics, strategies)
    sections += [note + "\n"] if note else []
    body = []
    for table in (TABLE1, TABLE2) + ((TABLE3,) if truth else ()):
        body += [f"## {tables[table]['title']}\n", table_caption(table, kinds) + "\n",
                 markdown_table(tables[table], DECIMALS[table], bold_smallest=False)]
    body += ["## Exact references\n", nca_diagnostics.references_caption(diagnostics) + "\n",
             nca_diagnostics.references_markdown(diagnostics),
             "## Convergence of the NCA\n", nca_diagnostics.convergence_caption(diagnostics) + "\n",
             nca_diagnostics.convergence_markdown(diagnostics)]
    sections += with_symbols(body)
    sections += ["## Couplings\n", f"![couplings matrices]({EXPLAIN_FILES['figure']})\n"]
    return "\n".join(sections)


def _write_figure(path: Path, unit: dict, settings, matrices: dict, model, mixture, *, sample_rate: float,
                  dpi) -> None:
    """The report's couplings figure (Figure 3) for the one explained model."""
    n_fft = 2 * (model.n_freq - 1)
    target = backend.to_host(model.decoder_output(mixture.T).T)
    segment = {"track": "given frames", "segment_index": 0, unit["kind"]: {**matrices, "target": target}}
    plot_couplings(path, segment, {unit["kind"]: unit["model"]}, list(settings.strategies),
                   sample_rate=sample_rate, n_fft=n_fft, dpi=dpi or DPI)
