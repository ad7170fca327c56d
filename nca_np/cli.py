"""``nca-np`` / ``python -m nca_np``: one command per stage of the experiment.

    synth      generate the built-in synthetic corpus (MUSDB18-HQ layout)
    prepare    STFT features, per-band scaler, test cut list (reads audio)
    train      train the models: every (model, run) unit not yet finished
    evaluate   separate the test excerpts with every run, score them (BSS Eval v4)
    couplings  fit the NCA strategies on every test segment of every model
    report     Tables 1–3, Figures 2–3, curves and metadata from saved results
    reproduce  all of the above in order (--plan: only say what it would do)
    separate   vocals and accompaniment of any audio file with a trained run

Every stage resumes: a rerun skips finished units and continues an
interrupted one. Settings come from a profile (configs/<name>.toml) and
``--set section.key=value`` overrides.

A failure is one line on standard error, never a traceback for something a
user can act on: exit status 2 for bad input or settings, 74 for the
operating system's failures (disk full, read-only or missing folder,
permission denied: the line names the path), 130 for an interruption.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import backend
from .config import load_profile
from .couplings import couplings_stage
from .errors import UserError, describe_os_error
from .evaluate import evaluate_stage
from .experiment import prepare_stage, reproduce, synth_stage, train_stage
from .models import kind_names
from .plan import plan
from .report import report_stage
from .separate import Separator, find_run, separate_files
from .workspace import Shard, Workspace

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
                        help="configuration profile: a name in configs/ (paper, demo) or a .toml path "
                             "(default: paper)")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one configuration value, e.g. --set train.runs=3 (repeatable)")
    common.add_argument("--workdir", type=Path, default=Path("."),
                        help="folder holding data/, cache/, runs/, couplings/, results/ (default: .)")
    common.add_argument("--device", choices=["cpu", "gpu", "auto"], default=None,
                        help="compute on the CPU (NumPy), the GPU (CuPy), or the GPU when one is usable "
                             "(auto); default: $NCA_NP_BACKEND or cpu")
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
        if name == "train":
            sub.add_argument("--runs", nargs="+", type=int, default=None, help="only these run numbers")
        if name == "reproduce":
            sub.add_argument("--plan", action="store_true",
                             help="print the work, what is done and a time estimate, without starting")
    _add_separate(commands, common)
    return parser


SEPARATE_HELP = "write the vocals and the accompaniment of audio files, separated by a trained run"


def _add_separate(commands, common) -> None:
    """``nca-np separate AUDIO… [--run RUN_DIR | --kind KIND] [--out DIR]``."""
    sub = commands.add_parser(
        "separate", parents=[common], help=SEPARATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=SEPARATE_HELP + ".\n\n"
                    "OUT/<name>/vocals.wav is the model's magnitude estimate through the inverse STFT with the\n"
                    "mixture's phase; OUT/<name>/accompaniment.wav is the mixture minus that estimate. Both are\n"
                    "mono (the channels averaged, as the models were trained), 32-bit float, at the input's\n"
                    "length and sample rate (another rate than the model's is resampled there and back).",
        epilog="examples:\n"
               "  nca-np separate song.flac --profile demo    the first finished run of the profile's first model\n"
               "  nca-np separate a.wav b.stem.mp4 --kind sf --out separated\n"
               "  nca-np separate song.wav --run runs/paper-0123abcd/dae/run_03")
    sub.add_argument("audio", nargs="+", type=Path, metavar="AUDIO",
                     help="files soundfile reads (wav, flac, ogg, mp3 …) or MUSDB18 .stem.mp4 files")
    which = sub.add_mutually_exclusive_group()
    which.add_argument("--run", type=Path, default=None, metavar="RUN_DIR",
                       help="a finished run folder (holding model.npz), e.g. runs/<profile>-<hash>/sf/run_00")
    which.add_argument("--kind", choices=kind_names(), default=None,
                       help="the first finished run of this model in the work folder, for --profile and "
                            "--set (default: the profile's first model)")
    sub.add_argument("--out", type=Path, default=Path("separated"),
                     help="folder of the results, one sub-folder per input (default: ./separated)")


def _separate(args, ws, progress) -> None:

    run = args.run if args.run is not None else find_run(ws.runs_dir, args.kind or ws.config["train"]["kinds"][0])
    separator = Separator.from_run(run, module=backend.xp())
    separate_files(args.audio, separator, args.out, progress=progress, log=_log)


def _log(line: str) -> None:
    print(line, flush=True)


def run(args) -> int:
    config = load_profile(args.profile, args.overrides)
    backend.use(args.device)
    ws = Workspace(args.workdir.resolve(), config, tuple(args.overrides))
    progress = not args.quiet and sys.stderr.isatty()
    shard = Shard.parse(getattr(args, "shard", None))
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
        evaluate_stage(ws, musdb_root=args.musdb_root, shard=shard, kinds=args.kinds, progress=progress, log=_log)
    elif args.command == "separate":
        _separate(args, ws, progress)
    elif args.command == "report":
        report_stage(ws, log=_log)
    elif args.plan:
        print(plan(ws, log=_log))
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
        return run(args)
    except UserError as exc:
        print(f"nca-np {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        line = describe_os_error(exc, where=args.workdir.resolve())
        if line is None:
            raise
        print(f"nca-np {args.command}: error: {line}", file=sys.stderr)
        return EXIT_OS_ERROR
    except KeyboardInterrupt:
        print(f"\nnca-np {args.command}: interrupted; rerun the same command to continue where it stopped",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
