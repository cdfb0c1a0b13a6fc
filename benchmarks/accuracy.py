"""Run a recipe (a named setting of `recipes/`) end to end and print the result beside the published figure.

    python benchmarks/accuracy.py mnist-mtt-ipc1-reduced --from ../shared/data/mnist
    python benchmarks/accuracy.py --list

A recipe is a dataset, a method, an IPC and the params that make it (on top of the defaults), with where they come
from (`distiller recipe show NAME`). The run goes through the `distiller` command line exactly as a user would type it,
in its own project folder (`--workdir`, default `runs/<recipe>`): `download --from DIR` (archives copied in and
checked), `expert-buffer`, `distill`, `evaluate`. It prints a table (stage times, accuracy, random-real baseline,
published figure) and records the same figures, the device, the date and the command in benchmarks/log.md.
`--package` then packages the set into datasets/<name>/, validates it and reproduces it from its card;
`--package-only` does only that, for a run the workdir already holds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from record import record  # noqa: E402  (a sibling script)

from distiller.core.recipes import catalogue, dotted  # noqa: E402
from distiller.core.runtime import resolve_device  # noqa: E402

RECIPES = ROOT / "recipes"


def _run(args: list[str], env: dict[str, str]) -> float:
    print("$ " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"stage failed (exit {done.returncode}): {' '.join(args)}")
    return time.perf_counter() - t0


def main() -> None:
    recipes = catalogue(RECIPES)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("setting", nargs="?", choices=sorted(recipes), metavar="RECIPE")
    ap.add_argument("--list", action="store_true", help="list the settings and exit")
    ap.add_argument("--from", dest="source_dir", help="folder with the source's original archives (offline)")
    ap.add_argument("--workdir", help="project folder of the run (default runs/<setting>)")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--fresh", action="store_true", help="empty the workdir first")
    ap.add_argument("--no-record", action="store_true", help="do not append to benchmarks/log.md")
    ap.add_argument(
        "--package",
        action="store_true",
        help="also package the set, copy it to datasets/<name>/, validate it and reproduce it from its card",
    )
    ap.add_argument(
        "--package-only",
        action="store_true",
        help="package the workdir's finished run again (say, after the card format changed), then as --package; "
        "runs no other stage",
    )
    ap.add_argument("--reproduce-runs", type=int, default=5, help="networks per config when reproducing (--package)")
    args = ap.parse_args()
    if args.list or not args.setting:
        for name, r in recipes.items():
            a = r.about
            print(f"{name:28s} {a.dataset:14s} {a.method:8s} ipc {a.ipc:<3d} published {a.published} {a.note}".rstrip())
        return
    recipe = recipes[args.setting]
    a = recipe.about
    work = Path(args.workdir or ROOT / "runs" / args.setting).resolve()
    if args.package_only and (args.fresh or not (work / "metrics" / "evaluate.json").is_file()):
        sys.exit(f"--package-only needs a finished run in {work} (and no --fresh)")
    args.package |= args.package_only
    args.no_record |= args.package_only  # its times are not a run's
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    resumed = _started(work)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
        env["MKL_NUM_THREADS"] = str(args.threads)
    sets = [f"{k}={json.dumps(v)}" for k, v in dotted(recipe.overrides).items()] + list(args.overrides)
    sets.append(f"device={args.device}")
    common = ["-p", str(ROOT / "params.yaml"), "--root", str(work)] + [a for kv in sets for a in ("-S", kv)]
    cli = [sys.executable, "-m", "distiller"]
    seconds: dict[str, float] = {}
    download = ["download", *(["--from", args.source_dir] if args.source_dir else [])]
    stages = [] if args.package_only else [download, ["expert-buffer"], ["distill"], ["evaluate"]]
    for stage in stages + ([["package"]] if args.package else []):
        seconds[stage[0]] = _run([*cli, *stage, *common], env)
    reproduced = _publish_here(work, cli, env, args.reproduce_runs) if args.package else []
    total = sum(seconds.values())
    m = json.loads((work / "metrics" / "evaluate.json").read_text())
    acc, rnd = m["accuracy"], m["baselines"]["random_real"]
    full = m["baselines"].get("full_data")
    row = {
        "setting": args.setting,
        "accuracy": f"{100 * acc['mean']:.2f} +- {100 * acc['std']:.2f}",
        "random real": f"{100 * rnd['mean']:.2f} +- {100 * rnd['std']:.2f}",
        "full data": f"{100 * full['mean']:.2f}" if full else "-",
        "published": a.published,
        "minutes": f"{total / 60:.1f}",
    }
    width = max(len(k) for k in row)
    for k, v in row.items():
        print(f"{k:>{width}}  {v}")
    budgets = [
        f"ipc {b}: " + ", ".join(f"{k} {100 * r['mean']:.2f} +- {100 * r['std']:.2f}" for k, r in row.items())
        for b, row in m["budgets"].items()
    ]
    print("\n".join(budgets + reproduced))
    print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + (RESUMED if resumed else ""))
    if args.no_record:
        return
    line = (
        f"- `{args.setting}` (recipes/{args.setting}.yaml), threads {args.threads or 'default'}: {a.method} ipc "
        f"{a.ipc} on {a.dataset}: {row['accuracy']} % (random real {row['random real']} %, full data "
        f"{row['full data']}); published {a.published}. {total / 60:.1f} min in all ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + ")"
        + (RESUMED if resumed else "")
        + "."
        + (f" Note: {a.note}." if a.note else "")
        + "".join(f"\n  - {line}" for line in budgets + reproduced)
    )
    record("Accuracy", line, resolve_device(args.device), threads=args.threads or None)


RESUMED = " (resumed in a workdir a run had started: the times are this invocation's, not the whole run's)"


def _started(work: Path) -> bool:
    """Whether an interrupted run left checkpoints in `work`: the stages resume from them, so take less time than
    they would from scratch (a finished stage clears its own)."""
    return any(f.is_file() for f in (work / ".checkpoints").rglob("*"))


def _publish_here(work: Path, cli: list[str], env: dict[str, str], runs: int) -> list[str]:
    """Copy the packaged folder to this repository's datasets/, validate it, and reproduce it from its card."""
    (built,) = [d for d in (work / "datasets").iterdir() if d.is_dir()]
    folder = ROOT / "datasets" / built.name
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(built, folder)
    _run([*cli, "validate", str(folder)], env)
    args = [*cli, "reproduce", str(folder), "--runs", str(runs), "--root", str(work)]
    print("$ " + " ".join(args), flush=True)
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True)
    print(done.stdout + done.stderr, flush=True)
    lines = [f"reproduced from the card ({runs} networks): {line}" for line in done.stdout.splitlines() if line]
    return lines + ([f"reproduce exit {done.returncode}: {done.stderr.strip()}"] if done.returncode else [])


if __name__ == "__main__":
    main()
