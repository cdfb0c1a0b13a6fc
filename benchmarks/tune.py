"""Tune one setting of a recipe on a validation split carved out of the training set, never on the test split.

    python benchmarks/tune.py fashion-mnist-mtt-ipc1-reduced --from ../shared/data/fashion-mnist \\
        --key mtt.lr_img --values 100,1000,10000 -S mtt.iterations=150 -S expert.num_experts=2

Each value runs the recipe through `benchmarks/accuracy.py` in its own folder (`runs/tune-<recipe>/<value>`) with
`data.validation` set (default 0.1: a stratified tenth of the training images is held out, and the networks are
scored on it). MTT's experts are trained once, on the first value's split, and reused by the others through
`expert.from` (the same images, the same network), unless the key is one they depend on (a param that dvc.yaml lists
for the download or expert-buffer stage). With no experts to train
(RaT-BPTT, or `expert.from` given) no run has to go first: the values run `--parallel` at a time from the start.
Prints one row per value (validation accuracy, mean +- std over `evaluate.num_eval` networks, and minutes) and
records the table in benchmarks/log.md. The test images are never scored on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from record import record

from distiller.core.config import parse_override
from distiller.core.errors import DistillerError
from distiller.core.params import load_params
from distiller.core.recipes import catalogue, dotted

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("setting", metavar="RECIPE")
    ap.add_argument("--key", required=True, help="the dotted param to sweep, e.g. mtt.lr_img")
    ap.add_argument("--values", required=True, help="comma-separated values, read as YAML (100,1e3,true)")
    ap.add_argument("--validation", type=float, default=0.1, help="share of the training images held out")
    ap.add_argument("--from", dest="source_dir", help="folder with the source's original archives (offline)")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--workdir", help="folder of the runs, one subfolder per value (default runs/tune-<recipe>)")
    ap.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="runs at once (after the first, if it trains the experts); give each --threads 1",
    )
    ap.add_argument("--no-record", action="store_true", help="do not append to benchmarks/log.md")
    args = ap.parse_args()
    if not 0 < args.validation < 1:
        sys.exit("--validation: a share of the training images, strictly between 0 and 1")
    values = [v.strip() for v in args.values.split(",") if v.strip()]
    base = Path(args.workdir or ROOT / "runs" / f"tune-{args.setting}").resolve()
    reuse = reuses_experts(args.key)
    recipes = catalogue(ROOT / "recipes")
    if args.setting not in recipes:
        sys.exit(f"no recipe '{args.setting}' in recipes/ (benchmarks/accuracy.py --list names them)")
    try:  # the params every value's run shares, read as the CLI reads them
        sets = dotted(recipes[args.setting].overrides) | dict(parse_override(kv) for kv in args.overrides)
        p = load_params(ROOT / "params.yaml", sets)
    except DistillerError as e:
        sys.exit(str(e))
    trains_experts = p.distill.method == "mtt" and not p.expert.from_

    def run(value: str, experts: Path | None) -> str:
        """One value's run, start to end; its table row (validation accuracy and its own minutes)."""
        sets = [*args.overrides, f"data.validation={args.validation}", f"{args.key}={value}"]
        sets += [f"expert.from={experts}"] if experts is not None else []
        cmd = [sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), args.setting, "--workdir", str(base / value)]
        cmd += ["--fresh", "--no-record", "--threads", str(args.threads)]
        cmd += (["--from", args.source_dir] if args.source_dir else []) + [a for kv in sets for a in ("-S", kv)]
        t0 = time.perf_counter()
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            raise SystemExit(f"{args.key}={value}: the run failed (its output is above)")
        minutes = (time.perf_counter() - t0) / 60
        acc = json.loads((base / value / "metrics" / "evaluate.json").read_text())["accuracy"]
        return f"| {value} | {100 * acc['mean']:.2f} +- {100 * acc['std']:.2f} | {minutes:.1f} |"

    first = [run(values[0], None)] if trains_experts else []  # the first run trains the experts the others reuse
    experts = base / values[0] / "artifacts" / "experts" if trains_experts and reuse else None
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        rows = first + list(pool.map(lambda v: run(v, experts), values[len(first) :]))
    held = f"Held out: a stratified {args.validation:g} of the training images; the test split was not scored on."
    table = "\n".join([f"| {args.key} | validation accuracy (%) | minutes |", "| --- | --- | --- |", *rows, "", held])
    print(table)
    if not args.no_record:
        record(f"Tuning `{args.setting}` on a validation split", table, threads=args.threads or None)


def reuses_experts(key: str) -> bool:
    """Whether the experts stay the same when `key` changes: it is none of the params dvc.yaml lists for the stages
    that make them (the images and the buffer), but says how a stage runs or what a later stage does."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    made_from = [*stages["download"]["params"], *stages["expert-buffer"]["params"]]
    return not any(key == k or key.startswith(f"{k}.") for k in made_from)


if __name__ == "__main__":
    main()
