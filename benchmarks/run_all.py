"""Run every benchmark in turn (each in its own interpreter) and repeat their verdict lines;
exit 1 if any missed a goal. Each appends its output to benchmarks/results/<name>-<date>.txt.

    /opt/squid-helper/venv/bin/python benchmarks/run_all.py [--quick] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import subprocess
import sys
import time

from common import BENCH_DIR, arg_parser

# Every bench_*.py beside this file: a new benchmark is run without being listed here.
SCRIPTS = tuple(sorted(p.name for p in BENCH_DIR.glob("bench_*.py")))
LIMIT_SECONDS = 1800.0


def main() -> int:
    args = arg_parser(__doc__.split("\n\n")[0]).parse_args()
    extra = ((["--quick"] if args.quick else []) + [f"--set={s}" for s in args.set]
             + ([f"--seed={args.seed}"] if args.seed is not None else []))
    verdicts = []
    failed = 0
    for script in SCRIPTS:
        command = [sys.executable, str(BENCH_DIR / script), *extra]
        print(f"\n===== {' '.join(command)}", flush=True)
        started = time.monotonic()
        try:
            completed = subprocess.run(command, stdout=subprocess.PIPE, text=True,
                                       timeout=LIMIT_SECONDS)
        except subprocess.TimeoutExpired:
            verdicts.append(f"{script}: did not finish within {LIMIT_SECONDS:g}s")
            failed += 1
            continue
        print(completed.stdout, end="", flush=True)
        lines = [ln for ln in completed.stdout.splitlines()
                 if ln.startswith(("RATIO", "RESULT"))]
        status = "" if completed.returncode == 0 else f" (exit {completed.returncode})"
        failed += completed.returncode != 0
        verdicts.append(f"{script}{status} [{time.monotonic() - started:.0f}s]: "
                        + ("; ".join(lines) or "no verdict line"))
    print("\n===== summary")
    for line in verdicts:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
