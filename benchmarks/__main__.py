"""Command line of the benchmarks: ``python -m benchmarks {run,table,clean}``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_job"]:  # a measurement in a child interpreter (benchmarks.child.run_job)
        from benchmarks.child import emit
        from benchmarks.jobs import JOBS

        emit(JOBS[argv[1]](json.loads(argv[2])))
        return 0

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="generate the data, measure, write results JSON")
    size = run.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="mode",
                      help="the issue's shapes with fewer layers and repeats (~2 min)")
    size.add_argument("--smoke", action="store_const", const="smoke", dest="mode",
                      help="tiny shapes, seconds: checks the runner works (numbers mean nothing)")
    size.add_argument("--gpu", action="store_const", const="gpu", dest="mode",
                      help="the GPU run (CUDA tests, 7B LoRA, batching, 1B pair with base; < 8 min) → "
                           "results-cuda.json; with --device cpu a dry run on tiny shapes (seconds)")
    run.add_argument("--out", type=Path, default=None,
                     help="results file (default benchmarks/results.json; results-quick/-smoke.json)")
    run.add_argument("--data", type=Path, default=HERE / "_data", help="scratch folder for generated checkpoints")
    run.add_argument("--device", default="cpu", help="cpu or cuda[:N] (never faked: fails without a GPU)")
    run.add_argument("--ww-python", default=None,
                     help="interpreter with weightwatcher installed (default: $DELTAW_BENCH_WW_PYTHON, then this one)")
    run.add_argument("--only", default=None,
                     help="comma-separated parts: lora,ww,dense,dense_analyze,memory,scaling,batching,structured,"
                          "threads,base,report,profile,gputests")
    table = sub.add_parser("table", help="markdown table + scaling plot from a results file")
    table.add_argument("--results", type=Path, default=HERE / "results.json")
    table.add_argument("--readme", type=Path, action="append", default=None,
                       help="README whose results markers get the table (repeatable; default benchmarks/README.md "
                            "and the project README; '' for none)")
    table.add_argument("--plot", type=Path, default=HERE / "scaling.png", help="scaling plot PNG ('' for none)")
    clean = sub.add_parser("clean", help="delete the generated checkpoints")
    clean.add_argument("--data", type=Path, default=HERE / "_data")
    args = parser.parse_args(argv)

    if args.cmd == "run":
        from benchmarks.run import default_out, run as run_all

        mode = args.mode or "full"
        only = set(args.only.split(",")) if args.only else None
        run_all(mode=mode, out=args.out or default_out(mode, args.device), data_dir=args.data, device=args.device,
                ww_python=args.ww_python, only=only)
        return 0
    if args.cmd == "table":
        from benchmarks.table import main as table_main

        readmes = [HERE / "README.md", HERE.parent / "README.md"] if args.readme is None else [
            Path(r) for r in args.readme if str(r)]
        png = Path(args.plot) if str(args.plot) else None
        print(table_main(args.results, readmes, png))
        return 0
    if args.cmd == "clean":
        from benchmarks.run import clean as clean_data

        clean_data(args.data)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
