#!/usr/bin/env python
"""`make bench-official`: every side-by-side benchmark against the official GPT-SoVITS code, then ONE
markdown table (what, shape, ours, official, ratio, target, pass/fail).

Each benchmark runs in its own process (the official modules are imported by top-level names such as
`utils`, `module`, `text`; a fresh process also gives each one the whole memory): `s2_step.py` (v2,
v2Pro, v3 CFM training steps), `loader.py` (data loader on the demo corpus), `checkpoint_save.py`.
Without GSV_OFFICIAL it prints why it skips and exits 0. Exits 1 if a benchmark failed to run
(targets missed are reported in the table, not as an exit code). `--pairs`/`--threads` go to every
script, `--args-<script> "..."` adds a script's own options (e.g. `--args-s2_step "--shapes 1x1"`),
`--only s2_step,loader` picks scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

SCRIPTS = ("s2_step", "loader", "checkpoint_save")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog=f"Needs {harness.OFFICIAL_ENV}=PATH (a GPT-SoVITS checkout).")
    p.add_argument("--only", default=",".join(SCRIPTS),
                   help=f"comma-separated subset of {', '.join(SCRIPTS)}")
    p.add_argument("--pairs", type=int, default=None, help="timed pairs of every script (default: its own)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of every script (default 1)")
    for name in SCRIPTS:
        p.add_argument(f"--args-{name}", default="", metavar="ARGS", help=f"more options for {name}.py")
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCRIPTS]
    if unknown:
        p.error(f"--only: unknown {unknown}; choose from {', '.join(SCRIPTS)}")
    try:
        root = harness.official_root()
    except harness.OfficialCheckoutError as err:
        print(err, file=sys.stderr)
        return 2
    if root is None:
        print(harness.skip_message("make bench-official"))
        return 0
    rows: list[harness.Row] = []
    failed: list[str] = []
    devices: set[str] = set()
    clocks: list[str] = []
    started = time.perf_counter()
    loads = [harness.load_average()]
    with tempfile.TemporaryDirectory(prefix="gsv_vs_official_") as work:
        for name in chosen:
            out = Path(work) / f"{name}.json"
            command = [sys.executable, str(HERE / f"{name}.py"), "--json", str(out),
                       "--threads", str(args.threads), *(["--pairs", str(args.pairs)] if args.pairs else []),
                       *shlex.split(getattr(args, f"args_{name}"))]
            print(f"== {name}: {' '.join(command[1:])}", flush=True)
            result = subprocess.run(command, env=os.environ.copy())
            loads.append(harness.load_average())
            if result.returncode != 0 or not out.exists():
                failed.append(f"{name} (exit {result.returncode})")
                continue
            rows += harness.read_rows(out)
            info = json.loads(out.read_text())
            devices.add(str(info.get("device", "cpu")))
            clocks.append(f"{name}: {harness.CLOCK_NAMES[info.get('clock', 'wall')]}")
    minutes = (time.perf_counter() - started) / 60
    import torch

    print(f"\n## gsv_accel vs official GPT-SoVITS ({root})\n")
    print(f"{platform.node() or 'this machine'}: {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"device {', '.join(sorted(devices)) or 'none'}, "
          f"{args.threads} torch thread(s), {minutes:.1f} min; load average (1/5/15 min) at the start and "
          f"after each script: {' | '.join(loads)}. Times: {'; '.join(clocks)}. Ratios are medians over "
          "alternated pairs.\n")
    print(harness.markdown_table(rows))
    if failed:
        print(f"\nfailed to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
