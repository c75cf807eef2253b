"""The `gsv-accel` command line.

Subcommands register themselves through `SUBCOMMANDS`: each entry is a function that receives the
argparse sub-parser collection, adds one parser and sets its `run` default to a function taking the
parsed arguments and returning an exit code. To add a subcommand (e.g. `prepare`, `import-gsv`),
write such a function and append it to `SUBCOMMANDS`.

Exit codes (the same convention as the recipes, `gsv_accel.lifecycle`):

* 0: done (`prepare`/`import-gsv`: the dataset is written or already up to date; `inspect`: the
  report is printed; `report`: the HTML file is written);
* 1: `inspect` of a gsv_accel checkpoint folder that fails verification (a file missing, truncated or
  not matching its sha256): the report is printed with `status: BROKEN` and the problem. This is a
  result, not a usage error;
* 2 (`EXIT_CODE_USER_ERROR`): bad input: a path that does not exist or is of the wrong kind, a file
  that is not what the option needs (a model folder, a weight file, an official experiment folder),
  a weight file that cannot be read safely (an unsafe pickle is refused, naming the global), a `.list`
  with no usable line, an `--out` that is not a dataset folder. Exactly one line goes to stderr,
  `gsv-accel <command>: error: <message>`, naming the file (and line or key) and what to do; no
  traceback, and nothing is written (the dataset is built in a temporary folder beside `--out` and
  only renamed into place when complete). argparse's own usage errors also exit 2.

Anything else (a bug, a full disk) ends with Python's traceback and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gsv_accel import __version__
from gsv_accel.lifecycle import EXIT_CODE_USER_ERROR, one_line

EXIT_OK = 0
# `inspect` of a checkpoint folder that fails verification (the report is printed).
EXIT_CHECKPOINT_BROKEN = 1
EXIT_ERROR = EXIT_CHECKPOINT_BROKEN  # the former name
EXIT_USER_ERROR = EXIT_CODE_USER_ERROR


class BrokenCheckpoint(Exception):
    """A checkpoint folder (named like one) that cannot even be described: exit 1, like a failed
    verification."""


# Checkpoint folders: step_<8 digits>, also while being written (.incomplete-) or set aside.
_CHECKPOINT_NAME = re.compile(r"^(\.incomplete-|corrupt-)?step_\d{8}")


class UsageError(Exception):
    """Bad input found by the command line itself; the message names the path and what to do."""


# ----------------------------------------------------------------------------------------------
# inspect
# ----------------------------------------------------------------------------------------------


def _human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def format_inspect(summary: dict[str, Any]) -> str:
    """Human-readable text for a summary from `gsv_accel.formats.summarize`."""
    lines = [f"file:        {summary['path']}"]
    lines.append(f"kind:        {summary['kind']}: {summary['kind_description']}")
    lines.append(f"model:       {summary['model']}")
    version = summary["version"] or "unknown"
    if not summary["supported"]:
        version += " (flow matching: train it with recipes/s2_cfm.py, not the GAN recipe recipes/s2.py)"
    lines.append(f"version:     {version}")
    if summary["version_reason"]:
        lines.append(f"             ({summary['version_reason']})")
    lines.append(f"header:      {summary['header'] if summary['header'] else 'none (plain zip)'}")
    for key in ("info", "epoch", "iteration", "step", "learning_rate", "lora_rank"):
        if summary.get(key) is not None:
            lines.append(f"{_label(key, 13)}{summary[key]}")
    if summary["has_optimizer_state"]:
        lines.append("optimizer:   state included")
    total = summary["num_parameters"]
    lines.append(f"parameters:  {total} ({_human_count(total)}) in {summary['num_tensors']} tensors")
    width = max((len(name) for name in summary["parameters_by_module"]), default=0)
    for name, count in summary["parameters_by_module"].items():
        lines.append(f"  {name:<{width}}  {count:>12}  ({_human_count(count)})")
    dtypes = ", ".join(f"{name} ({count})" for name, count in summary["dtypes"].items())
    lines.append(f"dtype:       {dtypes or 'none'}")
    if summary["config"]:
        lines.append("config:")
        for key, value in summary["config"].items():
            lines.append(f"  {key} = {value}")
    if summary["extra_keys"]:
        lines.append(f"other keys:  {', '.join(summary['extra_keys'])}")
    for note in summary["notes"]:
        lines.append(f"note:        {note}")
    return "\n".join(lines)


INSPECT_WHAT = "give a GPT-SoVITS .pth/.ckpt weight file or a gsv_accel checkpoint folder"


def inspect_path(path: str) -> dict[str, Any]:
    """Analysis behind `gsv-accel inspect`: a plain-data summary (no printing).

    A GPT-SoVITS weight file, or a gsv_accel checkpoint folder (its manifest, hashes verified).
    Raises `UsageError` for a missing path or a folder that is not a checkpoint, `GSVFormatError`
    for a file that is not a (safe) GPT-SoVITS weight file, `CheckpointError` for an unreadable manifest.
    """
    from gsv_accel.formats import GSVFormatError, UnsafeFileError, summarize

    target = Path(path)
    if not target.exists():
        raise UsageError(f"{path}: not found; {INSPECT_WHAT}")
    if target.is_dir():
        return inspect_checkpoint(target)
    try:
        return summarize(path)
    except UnsafeFileError:
        raise
    except GSVFormatError as err:
        raise GSVFormatError(f"{one_line(err)}; {INSPECT_WHAT}") from err


def inspect_checkpoint(folder: Path) -> dict[str, Any]:
    """A checkpoint folder's manifest, with every file checked against its recorded sha256."""
    from gsv_accel.checkpoint import MANIFEST_NAME, CheckpointError, read_manifest, verify_checkpoint

    if not (folder / MANIFEST_NAME).is_file() and _CHECKPOINT_NAME.match(folder.name):
        raise BrokenCheckpoint(f"{folder}: BROKEN: no {MANIFEST_NAME}, the save never completed; it is never "
                               "resumed from (--resume auto takes the newest complete checkpoint)")
    if not (folder / MANIFEST_NAME).is_file():
        raise UsageError(f"{folder}: a folder without {MANIFEST_NAME}, so not a gsv_accel checkpoint (or one "
                         f"whose save never completed); {INSPECT_WHAT} such as "
                         "<run>/checkpoints/<step folder>")
    manifest = read_manifest(folder)
    try:
        verify_checkpoint(folder, hashes=True)
        problem = None
    except CheckpointError as err:
        problem = one_line(err)
    try:
        files = {name: int(entry["bytes"]) for name, entry in manifest["files"].items()}
        extra = dict(manifest.get("extra") or {})
        metrics = dict(manifest.get("metrics") or {})
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / MANIFEST_NAME}: malformed manifest ({type(err).__name__}: "
                              f"{err}); the checkpoint cannot be described") from err
    return {"kind": "gsv_accel checkpoint", "path": str(folder), "valid": problem is None,
            "problem": problem, "step": manifest["step"], "epoch": manifest["epoch"],
            "metrics": metrics, "world_size": manifest.get("world_size"),
            "created": manifest.get("created"), "versions": manifest.get("versions", {}),
            "config_fingerprint": manifest.get("config_fingerprint"),
            "extra": extra, "files": files}


def _label(key: str, width: int) -> str:
    """`key:` padded to `width` columns, and always followed by at least one space."""
    return f"{key + ':':<{max(width, len(key) + 2)}}"


def format_checkpoint(summary: dict[str, Any]) -> str:
    # The label column fits the longest key (manifest `extra` keys such as wandb_run_id are longer
    # than the fixed labels).
    width = max([13] + [len(str(key)) + 2 for key in summary["extra"]])
    status = "complete, every file matches its sha256" if summary["valid"] else "BROKEN"
    rows = [("checkpoint", summary["path"]), ("status", status)]
    if summary["problem"]:
        rows.append(("problem", summary["problem"]))
    rows += [("step", summary["step"]), ("epoch", summary["epoch"]), ("processes", summary["world_size"]),
             ("created", summary["created"])]
    for key, value in summary["metrics"].items():
        shown = f"{value:.6g}" if isinstance(value, (int, float)) else value
        rows.append(("metric", f"{key} = {shown}"))
    rows += [(str(key), value) for key, value in summary["extra"].items()]
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in summary["versions"].items())))
    rows.append(("files", f"{len(summary['files'])} ({sum(summary['files'].values()) / 1e6:.1f} MB)"))
    lines = [f"{_label(key, width)}{value}" for key, value in rows]
    for name, size in summary["files"].items():
        lines.append(f"  {name:<32}{size:>12,d} bytes")
    return "\n".join(lines)


def _run_inspect(args: argparse.Namespace) -> int:
    summary = inspect_path(args.path)
    is_checkpoint = summary.get("kind") == "gsv_accel checkpoint"
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_checkpoint(summary) if is_checkpoint else format_inspect(summary))
    return EXIT_CHECKPOINT_BROKEN if is_checkpoint and not summary["valid"] else EXIT_OK


def _add_inspect(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="describe a GPT-SoVITS weight file (read safely: nothing pickled is executed)",
        description="Show the kind, detected version, parameter counts, dtype, training progress and "
                    "config of a GPT-SoVITS .pth/.ckpt file.",
    )
    parser.add_argument("path", help="a .pth or .ckpt file, or a gsv_accel checkpoint folder")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(run=_run_inspect)


def _add_prepare(subparsers: argparse._SubParsersAction) -> None:
    from gsv_accel.data.prepare import add_prepare_arguments, run_prepare

    parser = subparsers.add_parser(
        "prepare", help="turn a GPT-SoVITS .list and its audio into a training dataset",
        description="Read wav_path|speaker|lang|text lines, compute text, audio and HuBERT (and "
                    "optionally semantic and BERT) features, and save a train/validation DatasetDict. "
                    "Broken entries are skipped and listed in rejected.tsv.")
    add_prepare_arguments(parser).set_defaults(run=run_prepare)


def _add_import_gsv(subparsers: argparse._SubParsersAction) -> None:
    from gsv_accel.data.import_gsv import add_import_arguments, run_import

    parser = subparsers.add_parser(
        "import-gsv", help="convert a folder GPT-SoVITS already prepared (logs/<exp>) into a dataset",
        description="Read 2-name2text.txt, 3-bert/, 4-cnhubert/, 5-wav32k/ and 6-name2semantic.tsv "
                    "of an official experiment folder into the same dataset layout as `prepare`.")
    add_import_arguments(parser).set_defaults(run=run_import)


def _run_report(args: argparse.Namespace) -> int:
    from gsv_accel.report import write_report

    if args.max_validations < 0:
        raise UsageError(f"--max-validations must be >= 0, got {args.max_validations}")
    path = write_report(args.run_dir, args.out, max_validations=args.max_validations)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return EXIT_OK


def _add_report(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="write one self-contained HTML page about a run (plots, samples to listen to)",
        description="Read a run folder (metrics.jsonl or train.log, samples/, checkpoints' manifests, "
                    "exports/, config.yaml) and write one HTML file with everything embedded: plots of "
                    "the training losses and validation metrics (best marked, LR reductions and early "
                    "stop annotated), the validation samples next to the real utterances, checkpoints, "
                    "exports and the config. Works offline, on a running run and on a moved one.")
    parser.add_argument("run_dir", type=Path, help="the run folder (run.output_dir)")
    parser.add_argument("--out", type=Path, default=None,
                        help="HTML file to write (default <run>/report.html)")
    parser.add_argument("--max-validations", type=int, default=8,
                        help="embed the samples of at most this many validations (the best, the last and "
                             "evenly spaced others; default 8)")
    parser.set_defaults(run=_run_report)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_inspect, _add_prepare,
                                                                    _add_import_gsv, _add_report]


def _add_webui(subparsers: argparse._SubParsersAction) -> None:
    from gsv_accel import webui

    for stage, config in (("s2", "TEMP/tmp_s2.json"), ("s1", "TEMP/tmp_s1.yaml")):
        parser = subparsers.add_parser(
            f"train-{stage}", help=f"train the {'SoVITS' if stage == 's2' else 'GPT'} stage from the "
                                   f"GPT-SoVITS WebUI's {config}",
            description=f"Read the {config} the WebUI wrote (run from the GPT-SoVITS folder), import "
                        "logs/<exp> (cached), train in one process with --resume auto and put the exports "
                        "into the WebUI's weight folder.")
        webui.add_train_arguments(parser).set_defaults(
            run=lambda args, stage=stage: webui.train_from_webui(stage, args.webui_config, args.overrides))
    parser = subparsers.add_parser(
        "install-webui-shim", help="make a GPT-SoVITS WebUI's training buttons run gsv_accel (reversible)",
        description="Replace GPT_SoVITS/s2_train.py, s2_train_v3_lora.py and s1_train.py by two-line "
                    "scripts that run gsv-accel train-s2/train-s1, keeping the originals as "
                    "<name>.gsv_accel_orig; --uninstall puts the originals back.")
    parser.add_argument("path", type=Path, help="the GPT-SoVITS folder (with webui.py)")
    parser.add_argument("--uninstall", action="store_true", help="restore the original scripts")
    parser.set_defaults(run=webui.run_install_shim)


SUBCOMMANDS.append(_add_webui)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gsv-accel", description="GPT-SoVITS training on Accelerate")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input (exit 2, one line on stderr): the library's own classes
    (their messages name the file and the problem) and the file-system errors a wrong path gives."""
    from gsv_accel.checkpoint import CheckpointError
    from gsv_accel.config import ConfigError
    from gsv_accel.data.dataset import DatasetCompatibilityError
    from gsv_accel.data.listfile import PrepareError
    from gsv_accel.formats import GSVFormatError
    from gsv_accel.models.sv import SpeakerCheckpointError
    from gsv_accel.report import ReportError

    return (UsageError, ReportError, PrepareError, GSVFormatError, CheckpointError, DatasetCompatibilityError,
            SpeakerCheckpointError, ConfigError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError, FileExistsError)


def _os_error_message(err: OSError) -> str:
    if err.filename is None or not err.strerror:
        return one_line(err)
    return f"{err.filename}: {err.strerror}; check the path"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    errors = user_errors()
    try:
        return int(args.run(args))
    except BrokenCheckpoint as err:
        print(f"gsv-accel {args.command}: {one_line(err)}", file=sys.stderr)
        return EXIT_CHECKPOINT_BROKEN
    except errors as err:
        message = _os_error_message(err) if isinstance(err, OSError) else one_line(err)
        print(f"gsv-accel {args.command}: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
