"""What the side-by-side benchmarks against the official GPT-SoVITS code share: finding and importing
the official checkout (`GSV_OFFICIAL`), alternated timing, median ratios and the result table.

Light on purpose (no torch import at module level): the unit tests and `--help` use it without the
official checkout or a model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

OFFICIAL_ENV = "GSV_OFFICIAL"
# A file every GPT-SoVITS checkout these benchmarks can use has.
OFFICIAL_MARKER = Path("GPT_SoVITS") / "module" / "models.py"
REPO = Path(__file__).resolve().parents[2]


class OfficialCheckoutError(Exception):
    """GSV_OFFICIAL is set but does not name a usable GPT-SoVITS checkout."""


def skip_message(what: str) -> str:
    return (f"{what}: skipped, {OFFICIAL_ENV} is not set. Set {OFFICIAL_ENV}=PATH to a GPT-SoVITS checkout "
            f"(the folder holding {OFFICIAL_MARKER.parts[0]}/); ../shared/tools/official_checkout.sh "
            "MIRROR_GIT_DIR DEST makes one from a git mirror.")


def official_root(environ: dict[str, str] | None = None) -> Path | None:
    """The checkout named by GSV_OFFICIAL, None when unset; raises OfficialCheckoutError when it names
    something else."""
    value = (os.environ if environ is None else environ).get(OFFICIAL_ENV, "").strip()
    if not value:
        return None
    root = Path(value).expanduser().resolve()
    if not (root / OFFICIAL_MARKER).is_file():
        raise OfficialCheckoutError(f"{OFFICIAL_ENV}={value}: {root / OFFICIAL_MARKER} not found; it must "
                                    "name the root of a GPT-SoVITS checkout")
    return root


def import_official(root: Path) -> None:
    """Make the official modules importable the way its trainers import them (`utils`, `module.*`,
    `text`, `tools.*` from GPT_SoVITS/ and the checkout root).

    `tools/my_utils.py` (the official audio loader) imports gradio at module level, only for the
    WebUI's warning pop-ups; without gradio installed a bare stand-in module takes its place (none of
    the code these benchmarks run calls it)."""
    for path in (str(root), str(root / "GPT_SoVITS")):
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        import gradio  # noqa: F401
    except ImportError:
        sys.modules["gradio"] = types.ModuleType("gradio")


def require_official(what: str) -> Path | None:
    """The checkout, or None after printing the skip message (the caller then exits 0)."""
    root = official_root()
    if root is None:
        print(skip_message(what))
    return root


# ------------------------------------------------------------------------------------------- timing


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its waited-for children (the official loader
    decodes audio in ffmpeg processes). On a shared machine other jobs delay a process (wall time)
    far more than they change the CPU time its work takes, so alternated CPU times compare two codes
    more steadily; with one torch thread a step's CPU time is its compute time."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


CLOCKS = {"cpu": cpu_seconds, "wall": time.perf_counter}
CLOCK_NAMES = {"cpu": "CPU seconds (process + children)", "wall": "wall seconds"}


@dataclass
class Alternated:
    """Seconds of each side, pair by pair, on the chosen clock (and on the wall clock)."""

    ours: list[float]
    official: list[float]
    ours_wall: list[float] = field(default_factory=list)
    official_wall: list[float] = field(default_factory=list)

    def ratios(self) -> list[float]:
        """ours / official per pair."""
        return [o / b for o, b in zip(self.ours, self.official, strict=True)]

    def median_ratio(self) -> float:
        return median_ratio(self.ours, self.official)


def median_ratio(ours: Sequence[float], official: Sequence[float]) -> float:
    """Median over pairs of ours / official (pairs ran back to back, so a burst of machine load hits
    both sides of a pair alike; the median drops the pairs it did not)."""
    if len(ours) != len(official) or not ours:
        raise ValueError(f"need the same non-zero number of timings, got {len(ours)} and {len(official)}")
    if any(b <= 0 for b in official):
        raise ValueError("official timings must be positive")
    return statistics.median(o / b for o, b in zip(ours, official, strict=True))


def alternate(ours: Callable[[], object], official: Callable[[], object], pairs: int, warmup: int = 1,
              clock: Callable[[], float] = time.perf_counter, log: Callable[[str], None] | None = None
              ) -> Alternated:
    """Run both `warmup` times untimed, then `pairs` timed pairs, ours first in even pairs and the
    official first in odd ones (whichever runs second may find caches warm)."""
    if pairs < 1 or warmup < 0:
        raise ValueError("need pairs >= 1 and warmup >= 0")
    for _ in range(warmup):
        ours()
        official()

    def timed(fn: Callable[[], object]) -> tuple[float, float]:
        start, wall = clock(), time.perf_counter()
        fn()
        return clock() - start, time.perf_counter() - wall

    result = Alternated([], [])
    for index in range(pairs):
        if index % 2 == 0:
            (a, a_wall), (b, b_wall) = timed(ours), timed(official)
        else:
            (b, b_wall), (a, a_wall) = timed(official), timed(ours)
        result.ours.append(a)
        result.official.append(b)
        result.ours_wall.append(a_wall)
        result.official_wall.append(b_wall)
        if log is not None:
            log(f"pair {index}: ours {a:.3f} s, official {b:.3f} s, ratio {a / b:.3f} (wall: {a_wall:.3f} s, "
                f"{b_wall:.3f} s, {a_wall / b_wall:.3f})")
    return result


def synced(fn: Callable[[], object], device) -> Callable[[], None]:
    """`fn` followed by a CUDA synchronisation when `device` is a GPU (so its time is the work's)."""
    def run() -> None:
        fn()
        if getattr(device, "type", "cpu") == "cuda":
            import torch

            torch.cuda.synchronize(device)
    return run


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


# ------------------------------------------------------------------------------------------- table


@dataclass
class Row:
    """One line of the table. `ours`/`official` are display strings with units; `ratio` is what the
    target is about; `passed` None = no target."""

    what: str
    shape: str
    ours: str
    official: str
    ratio: float
    target: str = ""
    passed: bool | None = None


def meets(value: float, target: str) -> bool:
    """`value` against a target written as "<= 0.9", "< 0.5", ">= 10" or "> 1"."""
    for op, test in (("<=", float.__le__), (">=", float.__ge__), ("<", float.__lt__), (">", float.__gt__)):
        if target.strip().startswith(op):
            return test(float(value), float(target.strip()[len(op):]))
    raise ValueError(f"target {target!r} must start with <=, >=, < or >")


def verdict(passed: bool | None) -> str:
    return "" if passed is None else ("pass" if passed else "FAIL")


def markdown_table(rows: Sequence[Row]) -> str:
    header = ["what", "shape", "ours", "official", "ratio", "target", "pass/fail"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.what, row.shape, row.ours, row.official, f"{row.ratio:.3f}", row.target,
                 verdict(row.passed)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_rows(path: Path, rows: Sequence[Row], **info: object) -> None:
    path.write_text(json.dumps({"rows": [asdict(r) for r in rows], **info}, indent=1))


def read_rows(path: Path) -> list[Row]:
    return [Row(**r) for r in json.loads(path.read_text())["rows"]]


def seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 100 else f"{value:.0f} s"


# --------------------------------------------------------------------------------------- arguments


def parser(description: str, clock: bool = True) -> argparse.ArgumentParser:
    """The options every script takes (`--clock` where the script may time on CPU seconds)."""
    p = argparse.ArgumentParser(description=description,
                                epilog=f"Needs {OFFICIAL_ENV}=PATH (a GPT-SoVITS checkout); without it the "
                                       "script prints why it skips and exits 0.")
    p.add_argument("--pairs", type=int, default=3, help="timed pairs (default 3)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core machine more threads make "
                        "timings swing many times over)")
    if clock:
        p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                       help="what a pair compares: cpu = CPU seconds of the process and its children "
                            "(default; steadier on a shared machine), wall = elapsed seconds (always wall "
                            "on a GPU)")
    p.add_argument("--json", type=Path, default=None, help="also write the table rows here (for run_all.py)")
    return p


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def clock_for(args: argparse.Namespace, device: object = "cpu") -> str:
    """The clock a script times with: `--clock`, but wall time on a GPU (CPU time misses its work)."""
    return "wall" if getattr(device, "type", str(device)) == "cuda" else args.clock


def finish(rows: Sequence[Row], args: argparse.Namespace, title: str, device: object = "cpu",
           clock: str | None = None) -> int:
    """Print the script's table (and write --json); exit code 0 (targets are reported, not enforced)."""
    clock = clock or clock_for(args, device)
    print(f"\n{title} (on {device}, {args.threads} thread(s), {CLOCK_NAMES[clock]}, load average "
          f"{load_average()})")
    print(markdown_table(rows))
    if args.json:
        write_rows(args.json, rows, threads=args.threads, load_average=load_average(), device=str(device),
                   clock=clock)
    return 0
