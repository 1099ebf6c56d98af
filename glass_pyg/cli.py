"""The ``glass-pyg`` command."""
from __future__ import annotations

import argparse
import fnmatch
import os
import sys


class UsageError(Exception):
    """A command line that cannot run as written (exit status 2, like argparse's own errors)."""


def _positive(kind: type, strict: bool = True):
    """An argparse type: a number of ``kind`` that is > 0 (or >= 0 when not ``strict``), with a clear error."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (v > 0 if strict else v >= 0) or v != v or v == float("inf"):
            what = "an integer" if kind is int else "a finite number"
            raise argparse.ArgumentTypeError(f"must be {what} {'>' if strict else '>='} 0, got {text}")
        return v
    parse.__name__ = f"{'positive' if strict else 'non-negative'} {kind.__name__}"
    return parse


def _bench_sinkhorn(args: argparse.Namespace) -> int:
    from .experiments import bench_sinkhorn as B

    sizes = args.sizes if args.sizes else [args.n]
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    cfg = B.BenchConfig(sizes=sizes, gamma=args.gamma, rank_gamma=args.rank_gamma, band_eps=args.band_eps,
                        max_iter=args.max_iter, tol=args.tol, repeats=args.repeats,
                        dense_max_n=args.dense_max_n, pot_max_n=args.pot_max_n, seed=args.seed,
                        absolute_max_n=args.absolute_max_n)
    rows = B.run(cfg, progress=lambda r: print(f"  n={r.n} {r.method} {r.temperature}: {r.median_s:.4g}s",
                                               file=sys.stderr, flush=True))
    print(B.to_markdown(rows))
    print()
    print(B.summary(rows))
    if args.out:
        md, cs = B.write(rows, args.out)
        print(f"\nwrote {md} and {cs}")
    return 0


def _train(kind: str):
    def command(args: argparse.Namespace) -> int:
        from .experiments.config import load_config
        from .experiments.train import resume_config, run

        if args.resume:
            if args.config or args.set:
                raise UsageError("--resume continues a run with its own config; "
                                 "do not pass --config or --set with it")
            cfg = resume_config(args.resume)
            from .experiments.run_dir import read_summary
            done = read_summary(args.resume)
            if done is not None:
                raise UsageError(f"{args.resume} is a finished run (step {done.get('steps')}, accuracy "
                                 f"{done.get('accuracy')}): nothing to resume; start a new run with --config")
        elif not args.config:
            raise UsageError("--config is required (a path or a shipped name; see `glass-pyg configs`)")
        else:
            cfg = load_config(args.config, args.set)
        if cfg.kind != kind:
            raise UsageError(f"this is a {cfg.kind} config; run it with `glass-pyg "
                             f"{'manifold' if cfg.kind == 'manifold' else 'graph'}`")
        import torch.distributed as dist
        try:
            result = run(cfg, resume=args.resume, quiet=args.quiet, plot=args.plot, out_dir=args.out_dir)
            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # every process is done before any leaves the group (not on an error: it would hang)
        finally:
            if dist.is_available() and dist.is_initialized():  # started by torchrun: leave its group
                import gc
                gc.collect()  # the run's DistributedDataParallel wrapper (gloo work it holds) goes before the group
                dist.destroy_process_group()
        if os.environ.get("RANK", "0") == "0":  # under torchrun, the first process reports
            _print_final(result)
        return 0
    return command


def _print_final(result) -> None:
    f = result.final
    keys = ("accuracy", "rotation_err_deg", "edges_preserved", "loss", "perm_acc", "perm_acc_hungarian",
            "perm_acc_refined", "hits_at_5")
    shown = " ".join(f"{k}={f[k]:.4g}" for k in keys if isinstance(f.get(k), float))
    from .experiments.run_dir import read_summary
    early = (read_summary(result.run_dir) or {}).get("stopped_early")
    stopped = " (stopped early: the answer was stable)" if early else ""
    print(f"{result.run_dir}: step {f.get('step')}{stopped} {shown}")


def _configs(args: argparse.Namespace) -> int:
    from .experiments.config import describe_configs
    rows, grids = describe_configs()
    rows = [("name", "kind", "grid", "varies")] + rows
    width = [max(len(r[k]) for r in rows) for k in range(3)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:3], width)) + "  " + r[3])
    print("\ngrids (the experiments of the original GLASS README):")
    for gid, about in grids.items():
        print(f"  {gid}: {about}")
    return 0


def _compile(args: argparse.Namespace) -> int:
    from .experiments.aggregate import compile_runs
    csv_path, md_path, md = compile_runs(args.logdir, args.out)
    print(md)
    print(f"wrote {csv_path} and {md_path}")
    return 0


def sweep_names(patterns: list[str]) -> list[str]:
    """Config names of a sweep: files as given, a grid id (``G1``) for all its points, or shell globs of names."""
    from .experiments.config import shipped_configs
    from .experiments.grids import grid_points

    names: list[str] = []
    for pattern in patterns:
        if os.path.isfile(pattern):
            names.append(pattern)
            continue
        pat = pattern[:-5] if pattern.endswith(".yaml") else pattern
        hits = [p.name for p in grid_points().values() if p.grid == pat]
        hits = hits or [n for n in shipped_configs() if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise UsageError(f"no config file, grid or shipped config matches {pattern!r}")
        names.extend(hits)
    return names


def _sweep(args: argparse.Namespace) -> int:
    from .experiments.aggregate import compile_runs
    from .experiments.config import load_config
    from .experiments.train import run

    names = sweep_names(args.configs)
    out_dir = args.out_dir or "runs"
    configs = [load_config(n, args.set) for n in names]  # validate all before running any
    for k, (name, cfg) in enumerate(zip(names, configs), 1):
        print(f"[{k}/{len(configs)}] {name}", file=sys.stderr, flush=True)
        _print_final(run(cfg, quiet=args.quiet, plot=args.plot, out_dir=out_dir))
    _, md_path, md = compile_runs(out_dir)
    print(md)
    print(f"wrote {md_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``glass-pyg`` argument parser, one subcommand per task."""
    p = argparse.ArgumentParser(prog="glass-pyg", description="GLASS alignment layer for PyTorch Geometric")
    sub = p.add_subparsers(dest="command", required=True)
    for kind, help_text in (("manifold", "train and evaluate an S^2 experiment"),
                            ("graph", "train and evaluate an SBM graph experiment")):
        t = sub.add_parser(kind, help=help_text)
        t.add_argument("--config", help="config file or shipped config name")
        t.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                       help="overrides, e.g. --set train.steps=50 ot.gamma=0.02")
        t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
        t.add_argument("--out_dir", "--out-dir", help="parent folder of the run (default: log.out_dir)")
        t.add_argument("--quiet", action="store_true", help="no progress output")
        t.add_argument("--plot", action="store_true", help="write PNG figures into the run folder")
        t.set_defaults(func=_train(kind))
    c = sub.add_parser("configs", help="list the shipped configs")
    c.set_defaults(func=_configs)
    cr = sub.add_parser("compile-runs", help="tabulate the final metrics of every run in a folder")
    cr.add_argument("--logdir", default="runs")
    cr.add_argument("--out", help="output prefix (default LOGDIR/summary): writes .csv and .md")
    cr.set_defaults(func=_compile)
    sw = sub.add_parser("sweep", help="run several configs (names, paths, grid ids such as G1, or globs) "
                                         "and compile them")
    sw.add_argument("configs", nargs="+")
    sw.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    sw.add_argument("--out_dir", "--out-dir")
    sw.add_argument("--quiet", action="store_true")
    sw.add_argument("--plot", action="store_true")
    sw.set_defaults(func=_sweep)
    b = sub.add_parser("bench-sinkhorn", help="benchmark the 1-D entropic OT solvers")
    pos_int, pos_float, count = _positive(int), _positive(float), _positive(int, strict=False)
    b.add_argument("--n", type=pos_int, default=2048, help="problem size (when --sizes is not given)")
    b.add_argument("--sizes", type=pos_int, nargs="+", help="several problem sizes")
    b.add_argument("--gamma", type=pos_float, default=0.05, help="absolute gamma (squared score units)")
    b.add_argument("--rank_gamma", "--rank-gamma", type=pos_float, default=1.0,
                   help="gamma at rank temperature (in squared mean spacings)")
    b.add_argument("--band_eps", "--band-eps", type=pos_float, default=1e-6)
    b.add_argument("--max_iter", "--max-iter", type=pos_int, default=200)
    b.add_argument("--tol", type=pos_float, default=1e-6)
    b.add_argument("--repeats", type=pos_int, default=3)
    b.add_argument("--dense_max_n", "--dense-max-n", type=count, default=2048)
    b.add_argument("--pot_max_n", "--pot-max-n", type=count, default=2048)
    b.add_argument("--absolute_max_n", "--absolute-max-n", type=count, default=16384,
                   help="largest n solved at absolute gamma (its band grows like n)")
    b.add_argument("--seed", type=count, default=0)
    b.add_argument("--threads", type=pos_int, help="torch (and compiled kernel) threads; default: torch's")
    b.add_argument("--out", help="folder for sinkhorn.md and sinkhorn.csv")
    b.set_defaults(func=_bench_sinkhorn)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``glass-pyg``; returns the exit status (0, 1 for file errors, 2 for usage and config errors)."""
    from ._optional import MissingOptionalDependency
    from .experiments.config import ConfigError

    args = build_parser().parse_args(argv)
    if argv is None:  # run as the command: the process is ours (not a caller's Python session)
        from .experiments.memory import retain_freed_memory
        retain_freed_memory()
    import warnings
    shown = warnings.formatwarning
    # the library's warnings (a wide plan, a decoding outside the support) as one line each, not a traceback line
    warnings.formatwarning = lambda message, category, *_, **__: f"glass-pyg: {category.__name__}: {message}\n"
    try:
        return args.func(args)
    except (UsageError, ConfigError) as exc:  # the command line or the config: one clear line, status 2
        print(f"glass-pyg: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`glass-pyg configs | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except MissingOptionalDependency as exc:  # the message names the extra that installs it
        print(f"glass-pyg: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a folder that is a file, read-only, missing, full: one clear line, status 1
        where = f" {exc.filename!r}" if getattr(exc, "filename", None) else ""
        print(f"glass-pyg: error: cannot use{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
