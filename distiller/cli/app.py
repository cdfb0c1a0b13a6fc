"""The `distiller` command line: a thin layer over `distiller.stages` and the packaging commands.

Every stage command reads `params.yaml` (or `--params`), accepts `-S key=value` overrides, calls its stage module's
`run` and prints its `summary`. `distiller.core.session` supplies the rest: a Rich progress bar on a terminal (quiet in
CI logs), user and filesystem errors as one line on stderr with exit code 2, and one stage at a time per project. Stage
modules are imported when their command runs, so `--help` stays fast.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from distiller import __version__
from distiller.cli.recipe import recipe_app
from distiller.cli.reproduce import reproduce
from distiller.core.errors import DistillerError
from distiller.core.paths import Layout
from distiller.core.session import session
from distiller.stages.runner import load, run_stage

app = typer.Typer(
    name="distiller",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
    help="Distill a dataset into a few synthetic images per class (MTT or RaT-BPTT with Boost-DD), stage by stage, "
    "and package it as a Hugging Face datasets folder. `dvc repro` runs the stages in order; each can also be run by "
    "hand. `distiller params` shows every parameter with its meaning; `distiller publish` puts a packaged folder on "
    "the Hub as a tagged version.",
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Parameters file (YAML).", show_default=True)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", metavar="KEY=VALUE", help="Override a parameter, e.g. -S distill.ipc=1 (repeatable)."),
]
RootOpt = Annotated[
    Path, typer.Option("--root", help="Project directory that holds artifacts/ and metrics/.", show_default=True)
]
FolderArg = Annotated[Path, typer.Argument(help="A packaged datasets folder, e.g. datasets/digits-distilled-ipc10.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"distiller {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Distill a dataset into a few synthetic images per class."""


@app.command()
def download(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    root: RootOpt = Path("."),
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="Source dataset (overrides data.source): digits, mnist, fashion-mnist, "
            "cifar10, cifar100, `hf:<repo_id>[:<config>]`, `imagefolder:<path>`.",
        ),
    ] = None,
    from_: Annotated[
        Path | None,
        typer.Option(
            "--from",
            metavar="DIR",
            help="Folder of the source's original archives (e.g. the four MNIST "
            "*-ubyte.gz files): each is checked against torchvision's MD5, then copied into data.root.",
        ),
    ] = None,
) -> None:
    """Prepare the source dataset (default: scikit-learn's digits) as artifacts/data/prepared.safetensors.

    Splits sources without a test split (stratified, `data.test_fraction`, seeded by `data.split_seed`), resizes to
    `data.resolution` when set, preprocesses with training-set statistics (`data.preprocess`: per-channel
    normalisation, or ZCA whitening) and records a content hash that later stages check. Torchvision sources read
    their original archives from `data.root` (downloaded when online, or copied in with `--from DIR`).
    """
    run_stage("download", params, set_, root, {"data.source": source}, from_dir=from_)


@app.command("expert-buffer")
def expert_buffer(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Train the MTT experts and record their parameter trajectories in artifacts/experts/ (MTT only).

    Each of `expert.num_experts` ConvNets trains with plain SGD (lr `expert.lr`) and DSA for `expert.epochs` epochs;
    the parameters before training and after every epoch are stored by name in one safetensors file per expert.
    """
    run_stage("expert_buffer", params, set_, root)


@app.command()
def distill(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    root: RootOpt = Path("."),
    ipc: Annotated[int | None, typer.Option("--ipc", help="Images per class (overrides distill.ipc).")] = None,
    iterations: Annotated[
        int | None, typer.Option("--iterations", help="Outer iterations (mtt.iterations or ratbptt.iterations).")
    ] = None,
) -> None:
    """Distill the training set into `distill.ipc` images per class with MTT or RaT-BPTT (`distill.method`).

    Writes artifacts/distill/ (synthetic.safetensors with images, labels and the learned lr; curves.csv with the loss
    per iteration; grid.png, one row per class) and metrics/distill.json. With RaT-BPTT the set is boosted over
    `distill.budgets` (Boost-DD: its first k images per class are the budget-k set), and the references the
    evaluation compares against (sets distilled directly at each budget) go to artifacts/distill/references/.
    """
    extra: dict[str, Any] = {"distill.ipc": ipc}
    if iterations is not None:  # the iterations of the method the params and overrides select
        with session():
            extra[f"{load(params, set_, extra).distill.method}.iterations"] = iterations
    run_stage("distill", params, set_, root, extra)


@app.command()
def evaluate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Train fresh networks on the distilled set and report test accuracy, beside its references.

    MTT protocol: `evaluate.num_eval` networks, SGD (momentum 0.9, weight decay 5e-4, the learned lr or real_lr,
    x0.1 at half), DSA on. In the same run and with the same seeds: a random real subset of the same size and the
    full training set. A boosted RaT-BPTT set is scored at every budget, beside a set distilled directly at that
    budget, the naive subset (a prefix of the set distilled directly at the largest budget) and a random real subset
    (an MTT set's prefixes too with `-S evaluate.prefixes=true`). Writes metrics/evaluate.json and artifacts/evaluate/.
    """
    run_stage("evaluate", params, set_, root)


@app.command()
def package(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Package the distilled set as a Hugging Face datasets folder: `datasets/<source>-distilled-ipc<ipc>/`.

    One config per scored budget (ipc1, ipc2, ..., the largest the default), each `ipc<k>/train-00000-of-00001.parquet`
    with the exact float pixels, named labels (and learned soft labels) and an 8-bit preview; a dataset card whose YAML
    holds the card contract (version, provenance, method, preprocessing, protocol, the accuracy of every budget); the
    preprocessing (and test split) as safetensors sidecars; the image grid.
    """
    run_stage("package", params, set_, root)


@app.command()
def check(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Check the params file whole: every key known (with a did-you-mean), of its type, in range, and combinable.

    The first stage of `dvc repro`: its dep is params.yaml itself, so every edit of the file runs it, and a typo stops
    the pipeline in one line instead of passing unnoticed (the other stages list only the keys they read). Writes
    artifacts/check/params.txt, a marker no other stage reads.
    """
    run_stage("check", params, set_, root)


@app.command()
def params(
    file: Annotated[
        Path | None, typer.Option("--params", "-p", help="Show this file's values (default: the defaults).")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Print every parameter with its meaning, as params.yaml (the defaults, or a file's values with overrides)."""
    from distiller.core.params import render

    with session():
        p = load(file, set_)
    typer.echo(render(p), nl=False)


@app.command()
def validate(folder: FolderArg) -> None:
    """Check a packaged folder as a consumer will use it.

    The card parses and its `distiller:` mapping is a valid card contract (every key by name and type); every config
    loads with `datasets.load_dataset` with the row count the card declares; each config's rows begin the next
    config's (nesting); the sidecars load; no symbolic links.
    """
    from distiller.packaging.validate import validate as check

    with session():
        report = check(folder)
    typer.echo(report.summary())


class Target(StrEnum):
    hub = "hub"
    dir = "dir"


@app.command()
def publish(
    folder: FolderArg,
    dest: Annotated[Path | None, typer.Argument(help="With --to dir: the destination directory.")] = None,
    to: Annotated[Target, typer.Option("--to", help="hub (Hugging Face Hub) or dir (a directory).")] = Target.hub,
    repo: Annotated[str | None, typer.Option("--repo", help="With --to hub: the dataset repo, org/name.")] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Semantic version to tag (default and must be: the card's).")
    ] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the Hub repo private.")] = False,
    root: RootOpt = Path("."),
) -> None:
    """Publish a validated folder: to the Hub as one commit tagged `v<version>`, or copy it to a directory.

    `distiller publish datasets/NAME --to hub --repo org/name` creates the dataset repo if needed, uploads the folder
    in one commit and tags it, so `load_dataset("org/name", "ipc10", revision="v1.0.0")` pins this version. An
    existing tag is never moved. The token comes from HF_TOKEN or `hf auth login` and is never printed.
    `distiller publish datasets/NAME --to dir PATH` copies the folder to PATH (new or empty).
    `distiller publish experts --to hub --repo org/name` publishes the expert buffer (artifacts/experts, or a buffer
    folder) as a model repo with its card, tagged `v<version>` (default 1.0.0); `expert.from: hf:org/name@v1.0.0` uses
    it.
    """
    from distiller.packaging import publish as pub

    experts = (folder == Path("experts") and not folder.exists()) or (folder / "manifest.json").is_file()
    folder = Layout(root).experts_dir if folder == Path("experts") and not folder.exists() else folder
    with session():
        if to is Target.dir:
            if dest is None:
                raise DistillerError("--to dir needs a destination: distiller publish FOLDER --to dir PATH")
            copied = pub.publish_experts_to_dir(folder, dest, version or "1.0.0") if experts else None
            typer.echo(f"copied {folder} to {copied or pub.publish_to_dir(folder, dest)}")
            return
        if dest is not None:
            raise DistillerError(f"unexpected destination '{dest}' with --to hub (use --repo org/name)")
        if not repo or repo.count("/") != 1:
            raise DistillerError("--to hub needs --repo org/name")
        done = pub.publish_to_hub(folder, repo, version=version, private=private, experts=experts)
    typer.echo(f"published {folder} to {done.repo_id} at {done.tag} (commit {done.commit}): {done.url}")


app.add_typer(recipe_app)
app.command()(reproduce)


def main() -> None:
    """The `distiller` command; a usage error (an unknown option, a value of the wrong type) is one line, exit 2."""
    try:
        code = app(prog_name="distiller", standalone_mode=False)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        raise SystemExit(1) from None
    except Exception as e:  # a ClickException of the click that Typer uses (its own copy in recent versions)
        if not hasattr(e, "format_message") or not isinstance(getattr(e, "exit_code", None), int):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # `distiller` alone prints the help, as usual
            e.show()  # type: ignore[attr-defined]
            raise SystemExit(e.exit_code) from None  # type: ignore[attr-defined]
        ctx = getattr(e, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        typer.echo("error: " + " ".join(e.format_message().split()) + where, err=True)
        raise SystemExit(e.exit_code) from None  # type: ignore[attr-defined]
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
