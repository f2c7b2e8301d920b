"""`mpo-ray` command line: thin wrappers that parse arguments and call the library."""

from __future__ import annotations

import argparse
import sys

from mpo_ray import __version__


def _cmd_demo(args: argparse.Namespace) -> int:
    from mpo_ray.demo import run_demo

    run_demo(output=args.output, quick=args.quick)
    return 0


def _cmd_reweight(args: argparse.Namespace) -> int:
    from mpo_ray.config import load_config
    from mpo_ray.reweight import reweight

    config = load_config(args.config)
    reweight(config, output=args.output, progress=not args.quiet)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from mpo_ray.config import load_config
    from mpo_ray.generate import generate

    config = load_config(args.config)
    generate(config, output=args.output, weights=args.weights, progress=not args.quiet)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "solver":
        from mpo_ray.benchmarks.solver import main
    elif args.what == "generate":
        from mpo_ray.benchmarks.generate import main
    else:
        from mpo_ray.benchmarks.decode import main
    main(args.rest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpo-ray",
        description="Mixing Preference Optimization on Ray: mix single-objective policies into one MaxMin policy.",
    )
    parser.add_argument("--version", action="version", version=f"mpo-ray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="run MPO end to end on the built-in example")
    demo.add_argument("--output", default=None, help="directory for the demo's artifacts (default: print only)")
    demo.add_argument("--quick", action="store_true", help="smallest settings, for a smoke test")
    demo.set_defaults(func=_cmd_demo)

    rw = sub.add_parser("reweight", help="sample, score and solve for the mixing weights λ")
    rw.add_argument("config", help="YAML config with a `reweight:` section (see workflows/configs/)")
    rw.add_argument("--output", default=None, help="output URI (local dir or fsspec URL); overrides reweight.output")
    rw.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    rw.set_defaults(func=_cmd_reweight)

    gen = sub.add_parser("generate", help="generate one response per corpus prompt through the mixed policy, to Parquet")
    gen.add_argument("config", help="YAML config with a `generate:` section (see workflows/configs/)")
    gen.add_argument("--output", default=None, help="output URI (local dir or fsspec URL); overrides generate.output")
    gen.add_argument("--weights", default=None, help="weights artifact URI (weights.json of `mpo-ray reweight`); overrides the config's")
    gen.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    gen.set_defaults(func=_cmd_generate)

    bench = sub.add_parser("bench", help="benchmarks that print figures and ratios")
    bench.add_argument("what", choices=["solver", "decode", "generate"])
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark (see --help after it)")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # user errors: one clear line, no traceback
        print(f"mpo-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
