"""Command line: ``python -m bench run|list|report|flops|perf ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

DEFAULT_RESULTS = Path(os.environ.get("SSLBENCH_RESULTS_DIR", "results"))
SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def cmd_run(args: argparse.Namespace) -> int:
    from bench.config import load_suite
    from bench.suite import run_suite

    suite = load_suite(resolve_suite_path(args.suite))
    run_suite(suite, Path(args.results_dir), methods=args.methods, epochs=args.epochs,
              dry_run=args.dry_run, progress=not args.no_progress)
    return 0


def resolve_suite_path(name: str) -> Path:
    """A path, or the name of a suite shipped in ``suites/`` (``quickstart``)."""
    p = Path(name)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return p
    return SUITES_DIR / f"{name}.yaml"


def cmd_list(args: argparse.Namespace) -> int:
    from bench.backbones import list_backbones
    from bench.data.augment import list_recipes
    from bench.data.datasets import list_datasets
    from methods.base import get_method, list_methods

    print("methods:")
    for name in list_methods():
        cls = get_method(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"  {name:12s} {doc}")
    print("datasets:  " + ", ".join(list_datasets()))
    print("backbones: " + ", ".join(list_backbones()))
    print("recipes:   " + ", ".join(list_recipes()))
    suites = sorted(p.relative_to(SUITES_DIR).with_suffix("").as_posix() for p in SUITES_DIR.rglob("*.yaml"))
    print("suites:    " + ", ".join(suites))
    return 0


def cmd_perf(args: argparse.Namespace) -> int:
    from bench.perf import main_perf

    return main_perf(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train and evaluate every run of a suite")
    run.add_argument("suite", help="suite YAML path or name in suites/ (e.g. quickstart)")
    run.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    run.add_argument("--methods", type=_csv, default=None, help="comma-separated subset, e.g. simclr,byol")
    run.add_argument("--epochs", type=int, default=None, help="override the budget's epochs for every run")
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan, train nothing")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="methods, data sets, backbones, recipes and suites")
    lst.set_defaults(func=cmd_list)

    from bench.report.cli import add_flops_parser, add_report_parser

    add_report_parser(sub)
    add_flops_parser(sub)

    perf = sub.add_parser("perf", help="benchmarks: `perf augment`")
    perf.add_argument("rest", nargs=argparse.REMAINDER)
    perf.set_defaults(func=cmd_perf)
    return parser


def main(argv: list[str] | None = None) -> int:
    from bench.config import SuiteError
    from bench.data.datasets import DataNotFoundError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except (SuiteError, DataNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
