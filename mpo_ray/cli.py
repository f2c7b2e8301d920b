"""`mpo-ray` command line: thin wrappers that parse arguments and call the library."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import warnings

from mpo_ray import __version__
from mpo_ray.benchmarks import int_between, non_negative_int, positive_int
from mpo_ray.core.errors import UserError
from mpo_ray.runtime.session import install_signal_handlers, received_signal, set_verbose

log = logging.getLogger("mpo_ray")

VERBOSE_HELP = (
    "also show what Ray, torch and transformers print (INFO lines, workers' output, library warnings); "
    "by default only mpo-ray's own lines"
)


def _config(args: argparse.Namespace, **overrides):
    """The config file with the command's flags (those given) applied as overrides: one validation path for both.
    Outputs resolve against the working directory there; a flag naming an input passes through `cwd_path` first."""
    from mpo_ray.config import load_config

    given = {key.replace("__", "."): value for key, value in overrides.items() if value is not None}
    return load_config(args.config, overrides=given)


def _cmd_demo(args: argparse.Namespace) -> int:
    from mpo_ray.demo.run import run_demo

    summary = run_demo(
        output=args.output, quick=args.quick, adapters=args.adapters, seed=args.seed, eval_prompts=args.eval_prompts
    )
    print(open(summary["report"], encoding="utf-8").read())
    return 0


def _cmd_train_demo_policies(args: argparse.Namespace) -> int:
    from mpo_ray.config.document import cwd_path
    from mpo_ray.demo.policies import ADAPTER_DIR, train_demo_policies  # light: torch loads once the output is checked

    train_demo_policies(cwd_path(args.output) or ADAPTER_DIR, only=args.only)  # refuses a foreign --output first
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mpo_ray.workflows.evaluate import (
        check_results_output,
        evaluate_generations,
        format_evaluations,
        objectives_from_config,
        write_results,
    )

    config = _config(args)
    if args.output:  # before any scoring: never over a file evaluate did not write, never into a directory
        check_results_output(args.output)
    objectives = objectives_from_config(config)
    models = (config.reference.name, config.policy_names)  # MPO's own objective, where the files carry logp_ columns
    results = [
        evaluate_generations(g, objectives, reference=args.reference, name=g, models=models) for g in args.generations
    ]
    print(format_evaluations(results))
    if args.output:
        write_results(args.output, results)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    config = _config(args)
    from mpo_ray.config.document import cwd_path
    from mpo_ray.demo.plots import plot_front
    from mpo_ray.io.storage import join
    from mpo_ray.workflows.evaluate import format_evaluations
    from mpo_ray.workflows.sweep import Soup, default_output, run_sweep, sweep_points

    points = sweep_points(config, args.step, cwd_path(args.weights))
    output = cwd_path(args.output) or default_output(config)
    if args.soup:  # the paper's weight-space baseline: the uniform soup, and one at MPO's λ when it is given
        k = len(config.policies)
        points |= {"soup": Soup([1 / k] * k), **({"soup_mpo": Soup(points["MPO"])} if "MPO" in points else {})}
    summary = run_sweep(
        config,
        output=output,
        points=points,
        max_prompts=args.max_prompts,
        progress=not args.quiet,
        figure=plot_front,
    )  # front.png: written only over the sweep's own
    print(format_evaluations(summary["points"]))
    log.info("wrote %s and %s", join(output, "sweep.json"), join(output, "front.png"))
    return 0


def _cmd_reweight(args: argparse.Namespace) -> int:
    config = _config(args, reweight__output=args.output)  # a bad config fails before torch or Ray load
    from mpo_ray.workflows.reweight import reweight

    reweight(config, progress=not args.quiet)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    config = _config(args, generate__output=args.output, generate__weights_uri=args.weights)
    from mpo_ray.workflows.generate import generate

    generate(config, progress=not args.quiet)
    return 0


def _cmd_nightly(args: argparse.Namespace) -> int:
    from mpo_ray.config.document import cwd_path

    config = _config(
        args,
        nightly__night=args.night,
        nightly__prompts=cwd_path(args.prompts),  # an input typed here is the working directory's, not the config's
        nightly__feedback=cwd_path(args.feedback),
        nightly__store=args.store,  # an output: the config resolves it against the working directory
    )
    from mpo_ray.io.store import StoreConflict
    from mpo_ray.workflows.nightly import EXIT_CONFLICT, run_night

    try:
        result = run_night(config, progress=not args.quiet)
    except StoreConflict as exc:
        print(f"mpo-ray nightly: conflict: {exc}", file=sys.stderr)
        return EXIT_CONFLICT
    print(result.summary())  # the outcome, even when quiet: a scheduler's log should say what happened
    return result.exit_code


BENCHMARKS = (
    "solver",
    "estimator",
    "serving",
    "protocol",
    "decode",
    "score",
    "generate",
    "checkpoint",
)  # mpo_ray/benchmarks/<name>.py


def _cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    importlib.import_module(f"mpo_ray.benchmarks.{args.what}").main(args.rest)
    return 0


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="MPO end to end on SmolLM2 with three DPO-trained LoRA policies (local Ray)")
    demo.add_argument("--output", default=None, help="directory for the demo's artifacts (default: ./mpo-demo)")
    demo.add_argument("--quick", action="store_true", help="fewer prompts and tokens: a smoke test in a few minutes")
    demo.add_argument(
        "--adapters",
        default=None,
        help="directory of the three adapters (default: the shipped ones; see train-demo-policies)",
    )
    demo.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the demo's sampling and generation (default 0)"
    )
    demo.add_argument(
        "--eval-prompts",
        type=int_between(1, 200),
        default=None,
        metavar="N",
        help="held-out prompts to evaluate on (1-200; default 50, --quick 8): more give tighter "
        "intervals and power, in more time",
    )
    demo.set_defaults(func=_cmd_demo)


def _add_train_demo_policies(sub) -> None:
    train = sub.add_parser(
        "train-demo-policies", help="rebuild the demo's LoRA adapters with DPO (seeded, ~30 min on 2 CPU cores)"
    )
    train.add_argument(
        "--output",
        default=None,
        help="directory for the adapters (default: the ones shipped in mpo_ray/demo/data/adapters)",
    )
    train.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="OBJECTIVE",
        help="retrain only these adapters (concise, relevant, enthusiastic); keep the others",
    )
    train.set_defaults(func=_cmd_train_demo_policies)


def _add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="score generation Parquet with the config's reward functions/models")
    ev.add_argument("config", help="YAML config whose `rewards:` define the objectives")
    ev.add_argument("generations", nargs="+", help="generation outputs (Parquet file or directory) to evaluate")
    ev.add_argument(
        "--reference", default=None, help="reference generations (same prompt ids) for win rates and the MaxMin view"
    )
    ev.add_argument("--output", default=None, help="write the results as JSON to this URI")
    ev.set_defaults(func=_cmd_evaluate)


def _add_sweep(sub) -> None:
    sw = sub.add_parser(
        "sweep", help="generate and evaluate over a grid of fixed weights (K = 2 or 3): the trade-off front"
    )
    sw.add_argument("config", help="YAML config with a `generate:` section and `rewards:`")
    sw.add_argument("--step", type=float, default=0.25, help="grid step on the simplex, 1/n (default 0.25)")
    sw.add_argument(
        "--weights",
        default=None,
        help="the MPO point: a weights.json, a run directory, a weights store (its `latest`) or STORE/versions/NIGHT",
    )
    sw.add_argument(
        "--max-prompts", type=positive_int, default=None, metavar="N", help="use only the first N corpus prompts"
    )
    sw.add_argument(
        "--soup",
        action="store_true",
        help="also Rewarded Soups of the policies' LoRA adapters: uniform, "
        "and at the MPO weights when --weights is given",
    )
    sw.add_argument("--output", default=None, help="output directory (default: generate.output + '-sweep')")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=_cmd_sweep)


def _add_reweight(sub) -> None:
    rw = sub.add_parser("reweight", help="sample, score and solve for the mixing weights λ")
    rw.add_argument("config", help="YAML config with a `reweight:` section (see workflows/configs/)")
    rw.add_argument("--output", default=None, help="output URI (local dir or fsspec URL); overrides reweight.output")
    rw.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    rw.set_defaults(func=_cmd_reweight)


def _add_generate(sub) -> None:
    gen = sub.add_parser(
        "generate", help="generate one response per corpus prompt through the mixed policy, to Parquet"
    )
    gen.add_argument("config", help="YAML config with a `generate:` section (see workflows/configs/)")
    gen.add_argument("--output", default=None, help="output URI (local dir or fsspec URL); overrides generate.output")
    gen.add_argument(
        "--weights",
        default=None,
        help="weights: a weights.json (of `mpo-ray reweight`), a weights store of `mpo-ray nightly` "
        "(its `latest`) or STORE/versions/NIGHT (pinned); overrides the config's",
    )
    gen.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    gen.set_defaults(func=_cmd_generate)


def _add_nightly(sub) -> None:
    night = sub.add_parser(
        "nightly",
        help="reweight tonight's prompts warm-started from `latest`; promote the new weights if they pass the gate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 promoted (or a rerun of a promoted night: nothing changes); "
        "2 bad input or config, nothing\n"
        "written; 3 gate failed: the version is kept for review, `latest` stays (a rerun says so again);\n"
        "4 another run holds the store's lock or moved `latest`: nothing written, retry.",
    )
    night.add_argument("config", help="YAML config with a `nightly:` section (see workflows/configs/tiny.yaml)")
    night.add_argument(
        "--night", default=None, help="night id, also the version id (default: nightly.night, else today's UTC date)"
    )
    night.add_argument("--prompts", default=None, help="tonight's prompts URI; overrides nightly.prompts")
    night.add_argument("--feedback", default=None, help="tonight's preference pairs URI; overrides nightly.feedback")
    night.add_argument("--store", default=None, help="weights store URI; overrides nightly.store")
    night.add_argument("--quiet", action="store_true", help="no progress bar or log lines (the outcome line stays)")
    night.set_defaults(func=_cmd_nightly)


def _add_bench(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print figures and ratios")
    bench.add_argument("what", choices=BENCHMARKS)
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark (see --help after it)")
    bench.set_defaults(func=_cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpo-ray",
        description="Mixing Preference Optimization on Ray: mix single-objective policies into one MaxMin policy.",
    )
    parser.add_argument("--version", action="version", version=f"mpo-ray {__version__}")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_demo,
        _add_train_demo_policies,
        _add_evaluate,
        _add_sweep,
        _add_reweight,
        _add_generate,
        _add_nightly,
        _add_bench,
    ):
        add(sub)
    # --verbose is global, and also accepted after the command (SUPPRESS: not given there keeps the global's False)
    for command in sub.choices.values():
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def setup_logging(quiet: bool = False) -> None:
    """mpo-ray's progress lines on stderr (warnings only with --quiet); what libraries say: `quiet_libraries`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("mpo_ray")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def quiet_libraries(verbose: bool) -> None:
    """Without --verbose the terminal carries mpo-ray's own lines and nothing of Ray's, torch's or transformers'.

    Ray: `runtime.session.set_verbose` (workers' output, notices, Ray Data's console log). Here, for this
    process: the FutureWarnings, UserWarnings and deprecations that torch, transformers and peft raise on every
    load (unless -W / PYTHONWARNINGS chose otherwise), and transformers' own logger below ERROR (inherited by a
    local cluster's workers).
    """
    set_verbose(verbose)
    if verbose:
        return
    if not sys.warnoptions:
        for category in (FutureWarning, UserWarning, DeprecationWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# What the interruption line may promise. These commands write every artifact whole (io.storage: a temporary
# name, then a rename); the ones that "resume" reuse what a stopped run finished (score batches, generated files,
# sweep points), the demo starts its directory afresh. The others (bench, train-demo-policies) promise nothing.
RERUN = {
    "generate": "resume",
    "nightly": "resume",
    "reweight": "resume",
    "sweep": "resume",
    "demo": "start again",
    "evaluate": "start again",
}


def interrupted_line(command: str, signum: int) -> str:
    line = f"mpo-ray {command}: interrupted by {signal.Signals(signum).name}"
    return line + (f"; nothing half-written, rerun the same command to {RERUN[command]}" if command in RERUN else "")


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success; 2 with one line for a user's mistake (UserError); 128 + N with one line when signal N
    (SIGINT, SIGTERM) stopped it; anything else is a bug: traceback, exit 1."""
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "quiet", False))
    quiet_libraries(args.verbose)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    if main_thread:
        install_signal_handlers()
    try:
        return args.func(args)
    except UserError as exc:
        print(f"mpo-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # SIGINT or SIGTERM: every `finally` below ran (Ray is shut down); one line, no traceback
        signum = received_signal() or signal.SIGINT
        print(interrupted_line(args.command, signum), file=sys.stderr)
        return 128 + signum
    finally:
        for s, handler in previous.items():  # for callers in-process (tests); a process that exits drops them anyway
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


if __name__ == "__main__":
    sys.exit(main())
