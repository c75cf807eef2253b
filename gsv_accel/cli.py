"""The `gsv-accel` command line.

Subcommands register themselves through `SUBCOMMANDS`: each entry is a function that receives the
argparse sub-parser collection, adds one parser and sets its `run` default to a function taking the
parsed arguments and returning an exit code. To add a subcommand (e.g. `prepare`, `import-gsv`),
write such a function and append it to `SUBCOMMANDS`.

Errors meant for the user (`GSVFormatError` and its subclasses, missing files) are printed as one
message on stderr, without a traceback, and give exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gsv_accel import __version__

EXIT_OK = 0
EXIT_ERROR = 1


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
        version += " (not supported by gsv_accel yet: it trains v1, v2, v2Pro and v2ProPlus models)"
    lines.append(f"version:     {version}")
    if summary["version_reason"]:
        lines.append(f"             ({summary['version_reason']})")
    lines.append(f"header:      {summary['header'] if summary['header'] else 'none (plain zip)'}")
    for key in ("info", "epoch", "iteration", "step", "learning_rate", "lora_rank"):
        if summary.get(key) is not None:
            lines.append(f"{key + ':':<13}{summary[key]}")
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


def inspect_path(path: str) -> dict[str, Any]:
    """Analysis behind `gsv-accel inspect`: a plain-data summary (no printing).

    A GPT-SoVITS weight file, or a gsv_accel checkpoint folder (its manifest, hashes verified).
    """
    from gsv_accel.formats import summarize

    if Path(path).is_dir():
        return inspect_checkpoint(Path(path))
    return summarize(path)


def inspect_checkpoint(folder: Path) -> dict[str, Any]:
    """A checkpoint folder's manifest, with every file checked against its recorded sha256."""
    from gsv_accel.checkpoint import CheckpointError, read_manifest, verify_checkpoint

    manifest = read_manifest(folder)
    try:
        verify_checkpoint(folder, hashes=True)
        problem = None
    except CheckpointError as err:
        problem = str(err)
    return {"kind": "gsv_accel checkpoint", "path": str(folder), "valid": problem is None,
            "problem": problem, "step": manifest["step"], "epoch": manifest["epoch"],
            "metrics": manifest.get("metrics", {}), "world_size": manifest.get("world_size"),
            "created": manifest.get("created"), "versions": manifest.get("versions", {}),
            "config_fingerprint": manifest.get("config_fingerprint"),
            "extra": manifest.get("extra", {}),
            "files": {name: entry["bytes"] for name, entry in manifest["files"].items()}}


def format_checkpoint(summary: dict[str, Any]) -> str:
    lines = [f"checkpoint:  {summary['path']}",
             f"status:      {'complete, every file matches its sha256' if summary['valid'] else 'BROKEN'}"]
    if summary["problem"]:
        lines.append(f"problem:     {summary['problem']}")
    lines += [f"step:        {summary['step']}", f"epoch:       {summary['epoch']}",
              f"processes:   {summary['world_size']}", f"created:     {summary['created']}"]
    for key, value in summary["metrics"].items():
        lines.append(f"metric:      {key} = {value:.6g}")
    for key, value in summary["extra"].items():
        lines.append(f"{key + ':':<13}{value}")
    lines.append("versions:    " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()))
    lines.append(f"files:       {len(summary['files'])} ({sum(summary['files'].values()) / 1e6:.1f} MB)")
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
    return EXIT_ERROR if is_checkpoint and not summary["valid"] else EXIT_OK


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


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_inspect, _add_prepare,
                                                                    _add_import_gsv]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gsv-accel", description="GPT-SoVITS training on Accelerate")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from gsv_accel.checkpoint import CheckpointError
    from gsv_accel.formats import GSVFormatError

    try:
        return int(args.run(args))
    except (GSVFormatError, CheckpointError) as err:
        print(f"gsv-accel {args.command}: error: {err}", file=sys.stderr)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        print(f"gsv-accel {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
