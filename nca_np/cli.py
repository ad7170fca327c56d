"""``nca-np`` / ``python -m nca_np``: one command per stage of the experiment.

    synth      generate the built-in synthetic corpus (MUSDB18-HQ layout)
    prepare    STFT features, per-band scaler, test cut list (reads audio)
    train      train the models: every (model, run) unit not yet finished
    evaluate   separate the test excerpts with every run, score them (BSS Eval v4)
    couplings  fit the NCA strategies on every test segment of every model
    report     Tables 1–3, Figures 2–3, curves and metadata from saved results
    reproduce  all of the above in order (--plan: only say what it would do)
    separate   vocals and accompaniment of any audio file with a trained run
    explain    the NCA's tables and couplings figure for one's own network and frames

Every stage resumes: a rerun skips finished units and continues an
interrupted one. Settings come from a profile (configs/<name>.toml) and
``--set section.key=value`` overrides.

A failure is one line on standard error, never a traceback for something a
user can act on: exit status 2 for bad input or settings, 74 for the
operating system's failures (disk full, too little free space for a stage,
read-only or missing folder, permission denied: the line names the path), 75 when another command holds
the work folder (:mod:`nca_np.lock`), 130 for Ctrl-C and 143 for SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from . import __version__, backend, lock
from .config import load_profile
from .couplings import couplings_stage
from .errors import Terminated, UserError, describe_os_error
from .evaluate import evaluate_stage
from .experiment import prepare_stage, reproduce, synth_stage, train_stage
from .models import kind_names
from .plan import plan
from .report import report_stage
from .separate import Options, Separator, find_run, last_trained_run, resolve_run, separate_files
from .workspace import Shard, Workspace, bars_can_draw

STAGE_HELP = {
    "synth": "generate the built-in synthetic corpus (used by the demo profile)",
    "prepare": "compute features, the per-band scaler and the test cut list (reads audio)",
    "train": "train every (model, run) unit that is not finished yet",
    "evaluate": "separate the test excerpts with every trained run and score them with museval (BSS Eval v4)",
    "couplings": "fit the NCA (student and compositional) on every test segment",
    "report": "write tables, figures and metadata from saved results",
    "reproduce": "run every stage in order (the paper's protocol with --profile paper)",
}


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", default=os.environ.get("NCA_NP_PROFILE", "paper"),
                        help="configuration profile: a name in configs/ (paper: the paper's protocol; demo: "
                             "a few minutes; tiny: a whole reproduce in about 15 s, for learning and the tests) "
                             "or a .toml path (default: paper)")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one configuration value, e.g. --set train.runs=3 (repeatable)")
    common.add_argument("--workdir", type=Path, default=Path("."),
                        help="folder holding data/, cache/, runs/, couplings/, results/ (default: .)")
    common.add_argument("--device", choices=["cpu", "gpu", "auto"], default=None,
                        help="compute on the CPU (NumPy), the GPU (CuPy), or auto: the GPU, and the CPU only "
                             "when no GPU is visible (a GPU CuPy cannot use is an error); "
                             "default: $NCA_NP_BACKEND or cpu")
    common.add_argument("--quiet", action="store_true", help="no progress bars; one log line per unit")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nca-np", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train DAE, MSS-DAE and SF singing-voice separators and explain them with the "
                    "neural couplings algorithm; one command per stage, each resumable.",
        epilog="examples:\n"
               "  nca-np reproduce --profile demo        the whole job on the built-in synthetic corpus\n"
               "  nca-np reproduce --plan                what the paper's protocol needs, and how long\n"
               "  nca-np train --device gpu --shard 0/4  a quarter of the trainings, on the GPU\n\n"
               "Run `nca-np COMMAND --help` for the options of a command.")
    parser.add_argument("--version", action="version", version=f"nca_np {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options()
    for name, text in STAGE_HELP.items():
        sub = commands.add_parser(name, parents=[common], help=text, description=text)
        if name in ("prepare", "reproduce", "evaluate"):
            sub.add_argument("--musdb-root", default=None,
                             help="MUSDB18 folder (default: data.root of the profile, else $MUSDB_PATH)")
        if name in ("train", "couplings", "reproduce", "evaluate"):
            sub.add_argument("--shard", default=None, metavar="I/N",
                             help="do only every N-th unit of work, starting at I (0-based), "
                                  "e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")
        if name in ("train", "couplings", "evaluate"):
            sub.add_argument("--kinds", nargs="+", choices=kind_names(), default=None,
                             help="only these models")
        if name == "evaluate":
            sub.add_argument("--wiener-iterations", type=int, default=0, metavar="N",
                             help="score the models' stereo estimates refined by N multichannel Wiener filter "
                                  "iterations, kept beside the unfiltered scores (the report shows both); "
                                  "default 0: no filter")
        if name == "train":
            sub.add_argument("--runs", nargs="+", type=int, default=None, help="only these run numbers")
        if name == "reproduce":
            sub.add_argument("--plan", action="store_true",
                             help="print the work, what is done and a time estimate, without starting (on the "
                                  "device make reproduce uses unless --device says: the GPU when usable)")
            sub.add_argument("--no-calibrate", action="store_true",
                             help="with --plan: estimate from operation counts, without the calibration's minutes")
    _add_separate(commands, common)
    _add_explain(commands, common)
    return parser


SEPARATE_HELP = "write the vocals and the accompaniment of audio files, separated by a trained run"


def _add_separate(commands, common) -> None:
    """``nca-np separate AUDIO… [--run RUN] [--kind KIND] [--out DIR] [--mono] [--wiener-iterations N]``…"""
    sub = commands.add_parser(
        "separate", parents=[common], help=SEPARATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=SEPARATE_HELP + ".\n\n"
                    "The model sees the channel average; its estimate becomes a soft mask applied to every channel's\n"
                    "STFT (optionally refined by a multichannel Wiener filter), so OUT/<name>/vocals.wav has the\n"
                    "input's channels; OUT/<name>/accompaniment.wav is the mixture minus it. Both are 32-bit float,\n"
                    "at the input's length and sample rate (another rate is resampled there and back). Without\n"
                    "--run, --profile or --set, the runs are those of the last training in the work folder.",
        epilog="examples:\n"
               "  nca-np separate song.flac                   the runs of the last `train`/`reproduce` here\n"
               "  nca-np separate a.wav b.stem.mp4 --kind sf --wiener-iterations 1\n"
               "  nca-np separate song.wav --run runs/paper-0123abcd/dae/run_03\n"
               "  nca-np separate song.wav --run results/demo-latest --kind mss-dae --figure")
    sub.set_defaults(profile=None)  # None: the last training of the work folder, see _separate
    sub.add_argument("audio", nargs="+", type=Path, metavar="AUDIO",
                     help="files soundfile reads (wav, flac, ogg, mp3 …) or MUSDB18 .stem.mp4 files")
    sub.add_argument("--run", type=Path, default=None, metavar="RUN",
                     help="a run folder (runs/<profile>-<hash>/<kind>/run_NN), a training folder "
                          "(runs/<profile>-<hash>) or a report folder (results/<profile>-<hash> or -latest)")
    sub.add_argument("--kind", choices=kind_names(), default=None,
                     help="the first finished run of this model (default: the configuration's first model)")
    sub.add_argument("--out", type=Path, default=Path("separated"),
                     help="folder of the results, one sub-folder per input (default: ./separated)")
    sub.add_argument("--mono", action="store_true", help="average the channels and write mono files")
    sub.add_argument("--wiener-iterations", type=int, default=0, metavar="N",
                     help="multichannel Wiener filter iterations on the estimates (norbert); 0: none (default)")
    sub.add_argument("--figure", action="store_true",
                     help="also write spectrograms.png (mixture, estimate, true vocals where known)")


EXPLAIN_HELP = "explain one's own network on one segment of frames with the NCA"


def _add_explain(commands, common) -> None:
    """``nca-np explain WEIGHTS --frames FRAMES.npy [--vocals V.npy] [--out DIR] [--init-seed S]``."""
    sub = commands.add_parser(
        "explain", parents=[common], help=EXPLAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=EXPLAIN_HELP + ".\n\n"
                    "WEIGHTS is a chain of F×F dense + ReLU layers: a .npz with keys W1, b1, …, WL, bL (W of\n"
                    "shape (out, in); masks_input=True for a mask network) or a PyTorch state_dict of Linear\n"
                    "layers. FRAMES.npy is one (F, T) segment, frames as columns, in the network's own input\n"
                    "domain (for this project's runs: the band-scaled magnitudes the network was trained on; no\n"
                    "scaling is applied). Every NCA strategy of the profile's [nca] settings (--set nca.… changes\n"
                    "them), the baselines and the exact references are fitted, and OUT/explain.md, explain.json\n"
                    "and couplings.png written: the report's NCA sections for this one network.",
        epilog="examples:\n"
               "  nca-np explain net.npz --frames segment.npy --profile tiny --out explained/net\n"
               "  nca-np explain net.pt --frames segment.npy --set nca.iterations=200 --set nca.max_iterations=200")
    sub.add_argument("weights", type=Path, metavar="WEIGHTS", help="the network: .npz (W1, b1, …) or state_dict")
    sub.add_argument("--frames", type=Path, required=True, metavar="FRAMES.npy",
                     help="one (F, T) segment, frames as columns, in the network's input domain")
    sub.add_argument("--vocals", type=Path, default=None, metavar="VOCALS.npy",
                     help="the true vocals of the same frames (F, T): adds the SNR against the truth (Table 3)")
    sub.add_argument("--mask", action="store_true",
                     help="the network's output is a mask applied to its input (SF); a .npz may say so itself")
    sub.add_argument("--out", type=Path, default=Path("explained"), help="folder of the results (default: ./explained)")
    sub.add_argument("--init-seed", type=int, default=None, metavar="SEED",
                     help="the seed of each strategy's fit (default: nca.seed of the profile)")


def _explain(args, config) -> None:
    from .couplings import FitBar, NcaSettings
    from .explain import EXPLAIN_FILES, explain, load_frames, load_network

    model = load_network(args.weights, masks_input=True if args.mask else None, module=backend.xp())
    frames = load_frames(args.frames, n_freq=model.n_freq)
    vocals = load_frames(args.vocals, n_freq=model.n_freq) if args.vocals is not None else None
    seed = config["nca"]["seed"] if args.init_seed is None else args.init_seed
    bar = FitBar(not args.quiet and sys.stderr.isatty(), prefix="explain")
    try:
        unit = explain(model, frames, NcaSettings.from_config(config["nca"]), args.out, vocals=vocals,
                       init_seed=seed, sample_rate=config["stft"]["sample_rate"], watch=bar)
    finally:
        bar.close()
    for strategy, fit in unit["strategies"].items():
        _log(f"{unit['model']} {strategy}: TOD-R {fit['tod_r']:.4g}, SNR (model) {fit['snr_model_db']:.2f} dB, "
             f"relative error {fit['relative_error']:.3g}{'' if fit['converged'] else ' (not converged)'}")
    _log(f"explanation written to {args.out / EXPLAIN_FILES['report']}")


def _separate(args, ws, progress) -> None:

    if args.run is not None:
        run = resolve_run(args.run, args.kind)
    elif args.profile is None and not args.overrides and not os.environ.get("NCA_NP_PROFILE"):
        run = last_trained_run(ws.root, args.kind)
        _log(f"using {run}: the newest training in {ws.root / 'runs'} (--run, --profile or --set choose another)")
    else:
        run = find_run(ws.runs_dir, args.kind or ws.config["train"]["kinds"][0])
    separator = Separator.from_run(run, module=backend.xp())
    options = Options(mono=args.mono, wiener_iterations=args.wiener_iterations, figure=args.figure)
    separate_files(args.audio, separator, args.out, options=options, progress=progress, log=_log)


def _log(line: str) -> None:
    print(line, flush=True)


def run(args) -> int:
    device = args.device
    if device is None and getattr(args, "plan", False) and not os.environ.get(backend.ENV_VAR):
        device = "auto"  # the plan estimates the run that make reproduce would make
    backend.use(device)
    print(backend.device_line(), flush=True)  # first, so a run on the CPU is never silent
    config = load_profile(args.profile or os.environ.get("NCA_NP_PROFILE", "paper"), args.overrides)
    ws = Workspace(args.workdir.resolve(), config, tuple(args.overrides))
    progress = not args.quiet and bars_can_draw()
    shard = Shard.parse(getattr(args, "shard", None))
    _HELD.enter_context(_work_folder_lock(args, shard))
    started = time.perf_counter()
    if args.command == "synth":
        synth_stage(ws, log=_log)
    elif args.command == "prepare":
        prepare_stage(ws, musdb_root=args.musdb_root, progress=progress, log=_log)
    elif args.command == "train":
        train_stage(ws, shard=shard, kinds=args.kinds, runs=args.runs, progress=progress, log=_log)
    elif args.command == "couplings":
        couplings_stage(ws, shard=shard, kinds=args.kinds, progress=progress, log=_log)
    elif args.command == "evaluate":
        evaluate_stage(ws, musdb_root=args.musdb_root, shard=shard, kinds=args.kinds,
                       wiener_iterations=args.wiener_iterations, progress=progress, log=_log)
    elif args.command == "separate":
        _separate(args, ws, progress)
    elif args.command == "explain":
        _explain(args, config)
    elif args.command == "report":
        report_stage(ws, log=_log)
    elif args.plan:
        print(plan(ws, calibrate=not args.no_calibrate, log=_log))
        return 0
    else:
        report = reproduce(ws, musdb_root=args.musdb_root, shard=shard, progress=progress, log=_log)
        if report is not None:
            print(f"\nreport: {report}  ({time.perf_counter() - started:.0f} s)")
    return 0


#: Exit status of a failure of the operating system (sysexits.h's EX_IOERR).
EXIT_OS_ERROR = 74


def _joined_shard(argv: list[str]) -> list[str]:
    """``--shard -1/2`` as ``--shard=-1/2``: argparse takes a value that starts
    with "-" for an option and would fail with its own message, not ours."""
    joined, position = [], 0
    while position < len(argv):
        item = argv[position]
        if item == "--shard" and position + 1 < len(argv) and argv[position + 1].startswith("-"):
            joined.append(f"--shard={argv[position + 1]}")
            position += 2
            continue
        joined.append(item)
        position += 1
    return joined


def main(argv=None) -> int:
    argv = _joined_shard(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_as_interrupt(), _warnings_into_log(), _HELD:
            return run(args)
    except lock.FolderLocked as exc:
        print(f"nca-np {args.command}: error: {exc}", file=sys.stderr)
        return lock.EXIT_LOCKED
    except UserError as exc:
        print(f"nca-np {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except OSError as exc:
        line = describe_os_error(exc, where=args.workdir.resolve(), option=_option_of_failing_path(args, exc))
        if line is None:
            raise
        print(f"nca-np {args.command}: error: {line}", file=sys.stderr)
        return EXIT_OS_ERROR
    except KeyboardInterrupt as exc:
        how = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
        print(f"\nnca-np {args.command}: {how}; rerun the same command to continue where it stopped",
              file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def _option_of_failing_path(args, exc: OSError) -> str:
    """The option that chose the folder of a failing path: ``--out`` for
    ``separate``'s and ``explain``'s outputs, ``--workdir`` otherwise."""
    out = getattr(args, "out", None)
    if args.command not in ("separate", "explain") or out is None:
        return "--workdir"
    if exc.filename is None:
        return "--out"
    failing, out = Path(os.fsdecode(exc.filename)).resolve(), out.resolve()
    return "--out" if failing == out or out in failing.parents else "--workdir"


# ---------------------------------------------------------------- lock, signals, warnings

#: Exit status after Ctrl-C (128 + SIGINT) and after SIGTERM (128 + SIGTERM,
#: what SLURM sends at the time limit or on scancel).
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
#: The work folder's lock while a command runs (released when main returns).
_HELD = contextlib.ExitStack()


def _work_folder_lock(args, shard):
    """The lock of :mod:`nca_np.lock` for a command that writes into the
    work folder (not ``separate``, which writes to --out, nor ``--plan``)."""
    if args.command in ("separate", "explain") or getattr(args, "plan", False):
        return contextlib.nullcontext()
    command = f"nca-np {args.command}" + (f" --shard {shard.index}/{shard.count}" if shard.count > 1 else "")
    return lock.hold(args.workdir.resolve(), shard_index=shard.index, shard_count=shard.count, command=command,
                     log=_log)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM ends the command as Ctrl-C does (every write in progress
    undone, one line), with exit status :data:`EXIT_TERMINATED`."""
    import signal

    def stop(signum, frame):
        raise Terminated()
    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _warnings_into_log():
    """Warnings (NumPy's RuntimeWarnings and others) become log lines on
    standard output, so that standard error holds only the one-line error."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        _log(f"warning: {message} ({category.__name__}, {Path(filename).name}:{lineno})")
    previous, warnings.showwarning = warnings.showwarning, show
    try:
        yield
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
