"""Hostile input and faults, class by class: every case ends in exit code 2 with one line naming the key, file or path,
and leaves nothing half-written; none exits 0 with a wrong result (docs/reliability.md lists the guarantees).

Classes: params files and `-S` overrides; artifacts and checkpoints; dataset folders and cards for `validate` and
`publish`; disk full (patched where writes fail, and a real full filesystem) and read-only filesystems in every stage
and in `publish --to dir`; processes (the nproc keys) beyond the machine; concurrent runs.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from unittest.mock import patch

import pytest
import torch
import yaml
from helpers import STAGES, TINY, make_project, tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from distiller.cli.app import app
from distiller.core.config import parse_override
from distiller.core.errors import DistillerError
from distiller.core.params import load_params, params_from_dict
from distiller.core.paths import Layout
from distiller.core.session import project_lock

runner = CliRunner()


def refused(result, *fragments: str) -> None:
    """Exit 2, one line on stderr holding every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), result.stderr
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------------------------------
# 1. params files and overrides

BOMB = "".join(
    f"{a}: &{a} [{', '.join([f'*{b}'] * 9) if b else ', '.join(['x'] * 9)}]\n"
    for b, a in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
).replace("a: &a [, ", "a: &a [")


def _file(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "params.yaml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


PARAM_FILES = [
    ("seed: !!python/name:os.system\n", ["the YAML tag", "not allowed"]),
    ("seed: !custom 3\n", ["the YAML tag '!custom'"]),
    (b"seed: \xff\xfe\n", ["not UTF-8"]),
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", ["nested more than"]),
    (BOMB.replace("\ni:", "\nseed:"), ["more than", "values"]),
    ("a: &a [*a]\n", ["more than", "values"]),
    ("seed: 1\nseed: 2\n", ["'seed' appears twice"]),
    ("seed: 1\n" + "#" * (1 << 20), ["larger than"]),
    ("distill: {ipc: [1\n", ["not valid YAML"]),
    ("- 1\n- 2\n", ["must be a mapping"]),
    ("augment: {rotate: .inf}\n", ["augment.rotate must be a finite number"]),
    ("mtt: {lr_img: .nan}\n", ["mtt.lr_img must be a finite number"]),
    ("device: cudaXYZ\n", ["device", "cudaXYZ"]),
    ("distill: {ipc: 0}\n", ["distill.ipc must be >= 1"]),
]


@pytest.mark.parametrize(("content", "fragments"), PARAM_FILES, ids=[f[1][0] for f in PARAM_FILES])
def test_hostile_params_files_are_one_line(tmp_path: Path, content, fragments):
    path = _file(tmp_path, content)
    refused(runner.invoke(app, ["params", "-p", str(path)]), str(path), *fragments)


def test_the_alias_bomb_is_a_real_one():
    """The BOMB above expands to 9**9 (387 million) values: refused by counting, never by expanding."""
    assert len(BOMB) < 400 and BOMB.count("*") == 8 * 9


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("distill.ipc=[1", ["override distill.ipc: not valid YAML"]),
        ('distill.ipc=!!python/object/apply:os.system ["true"]', ["override distill.ipc", "not allowed"]),
        ("distill.ipc={a: {b: {c: " + "[" * 100 + "]" * 100 + "}}}", ["nested more than"]),
        ("augment.rotate=.inf", ["augment.rotate must be a finite number"]),
        ("mtt.lr_img=1e999", ["mtt.lr_img must be a finite number"]),
        ("device=cuda:x", ["device"]),
        ("device=cuda:\u0663", ["device"]),  # an Arabic-Indic digit: torch parses ASCII digits only
        ("device=cuda:99999999999999999999", ["device"]),
        ("mtt.lr_img=1e308", ["mtt.lr_img", "float32"]),
        ("evaluate.weight_decay=1e39", ["evaluate.weight_decay", "float32"]),
        ("seed=99999999999999999999999", ["seed", "64 bits"]),
        ("expert.lr=1e30", ["expert.lr must be <= 10"]),
        ("package.name=../x", ["package.name", "no folder or Hub repo name"]),
        ("distill.ipc", ["must look like key=value"]),
        ("distill=3", ["distill must be a mapping"]),
    ],
)
def test_hostile_overrides_are_one_line(override, fragments):
    refused(runner.invoke(app, ["params", "-S", override]), *fragments)


@pytest.mark.parametrize("where", ["fifo", "directory", "missing"])
def test_params_that_are_not_a_regular_file_are_one_line(tmp_path: Path, where):
    path = tmp_path / "params.yaml"
    {"fifo": lambda: os.mkfifo(path), "directory": path.mkdir, "missing": lambda: None}[where]()
    refused(runner.invoke(app, ["params", "-p", str(path)]), str(path))


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=40), key=st.sampled_from(["distill.ipc", "mtt.lr_img", "device", "augment.strategy"]))
def test_any_override_value_loads_or_fails_with_one_clean_line(value, key):
    try:
        load_params(None, dict([parse_override(f"{key}={value}")]))
    except DistillerError as e:
        assert str(e) and "\n" not in str(e)


_yaml_nodes = st.recursive(
    st.one_of(st.integers(), st.floats(allow_subnormal=False), st.text(max_size=5), st.booleans(), st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=30,
)


@settings(max_examples=100, deadline=None)
@given(data=_yaml_nodes, anchors=st.integers(0, 6))
def test_yaml_with_anchors_and_aliases_loads_or_fails_cleanly(data, anchors):
    """Documents with repeated anchors (a ladder of aliases `anchors` deep) under a real key."""
    ladder = "".join(f"k{i}: &k{i} [{', '.join([f'*k{i - 1}'] * 4) if i else '0'}]\n" for i in range(anchors))
    text = ladder + yaml.safe_dump({"seed": data}) if anchors == 0 else ladder + f"seed: *k{anchors - 1}\n"
    try:
        load_params(None, {"seed": parse_override(f"seed={json.dumps(data)}")[1]})
        from distiller.core import safeyaml

        safeyaml.loads(text, "doc")
    except DistillerError as e:
        assert str(e) and "\n" not in str(e)


# ---------------------------------------------------------------------------------------------------------------------
# 2. artifacts, checkpoints, cards: a module-wide finished project, copied per case


FINISHED = tiny(distill={"ipc": 2, "budgets": [1]}, evaluate={"prefixes": True})  # packaged as ipc1 and ipc2


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("hostile"), FINISHED, *STAGES)


@pytest.fixture
def project(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(finished, copy)
    return copy


def stage(name: str, root: Path, *extra: str):
    return runner.invoke(app, [name, "--params", str(root / "params.yaml"), "--root", str(root), *extra])


def _rewrite_meta(path: Path, edit) -> None:
    """Rewrite a safetensors file's metadata JSON (keeping its seal), as an editor of the file would."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(path), metadata=edit(meta))


def _edit_json(key: str, value):
    def edit(meta: dict) -> dict:
        inner = json.loads(meta["distiller"])
        inner[key] = value
        return {"distiller": json.dumps(inner)}

    return edit


ARTIFACTS = {  # case -> (damage the project, stage that reads it, what the error names)
    "manifest is a list": (lambda lay: (lay.experts_dir / "manifest.json").write_text("[]"), "distill", "manifest"),
    "manifest field retyped": (
        lambda lay: (lay.experts_dir / "manifest.json").write_text(
            (lay.experts_dir / "manifest.json").read_text().replace('"num_experts": 2', '"num_experts": "2"')
        ),
        "distill",
        "manifest",
    ),
    "metadata not JSON": (
        lambda lay: _rewrite_meta(lay.synthetic, lambda m: {"distiller": "{nope"}),
        "evaluate",
        "synthetic",
    ),
    "learned lr edited": (lambda lay: _rewrite_meta(lay.synthetic, _edit_json("lr", 5.0)), "evaluate", "synthetic"),
    "ipc edited": (lambda lay: _rewrite_meta(lay.synthetic, _edit_json("ipc", 1)), "evaluate", "synthetic"),
    "prepared metadata edited": (
        lambda lay: _rewrite_meta(lay.prepared, _edit_json("classes", list("abcdefghij"))),
        "expert-buffer",
        "prepared",
    ),
    "metrics not a mapping": (lambda lay: lay.evaluate_metrics.write_text("[1, 2]"), "package", "evaluate.json"),
    "metrics edited": (
        lambda lay: lay.evaluate_metrics.write_text(
            lay.evaluate_metrics.read_text().replace('"mean": 0.', '"mean": 0.9', 1)
        ),
        "package",
        "evaluate.json",
    ),
}


@pytest.mark.parametrize("case", sorted(ARTIFACTS))
def test_damaged_artifacts_are_refused_by_name(project: Path, case):
    damage, reader, named = ARTIFACTS[case]
    layout = Layout(project)
    damage(layout)
    outputs = {"distill": layout.distill_dir, "evaluate": layout.evaluate_dir, "expert-buffer": layout.experts_dir}
    before = sorted(p.name for p in outputs.get(reader, layout.datasets_dir).rglob("*"))
    refused(stage(reader, project), named)
    assert sorted(p.name for p in outputs.get(reader, layout.datasets_dir).rglob("*")) == before


def test_an_edited_checkpoint_is_refused_not_resumed(project: Path):
    from distiller.methods import mtt

    real, calls = mtt.mtt_loss, {"n": 0}

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    with patch.object(mtt, "mtt_loss", interrupted):
        assert stage("distill", project, "-S", "distill.checkpoint_every=1").exit_code == 130
    (checkpoint,) = Layout(project).checkpoints("distill").glob("*.safetensors")
    _rewrite_meta(checkpoint, _edit_json("state", {"iteration": "2"}))
    refused(stage("distill", project, "-S", "distill.checkpoint_every=1"), checkpoint.name, "corrupted or edited")


# ---------------------------------------------------------------------------------------------------------------------
# 3. dataset folders and cards


@pytest.fixture
def folder(project: Path) -> Path:
    p = params_from_dict(FINISHED)
    return Layout(project).package_dir(p.package.folder(p.data.source, p.distill.ipc))


def _card(old: str, new: str):
    def edit(f: Path) -> None:
        text = (f / "README.md").read_text()
        assert old in text, old
        (f / "README.md").write_text(text.replace(old, new, 1))

    return edit


def _front(edit):
    """Edit the card's YAML front matter as data (`edit` changes the mapping in place), keeping its body."""

    def apply(f: Path) -> None:
        _, front, body = (f / "README.md").read_text().split("---\n", 2)
        data = yaml.safe_load(front)
        edit(data)
        (f / "README.md").write_text(f"---\n{yaml.safe_dump(data, sort_keys=False)}---\n{body}")

    return apply


def _nan_pixels(f: Path) -> None:
    import pyarrow.parquet as pq

    shard = f / "ipc1/train-00000-of-00001.parquet"
    table = pq.read_table(shard)
    rows = table.column("pixel_values").to_pylist()
    rows[0][0][0][0] = float("nan")
    size = shard.stat().st_size
    import pyarrow as pa

    table = table.set_column(
        table.schema.get_field_index("pixel_values"),
        table.schema.field("pixel_values"),
        pa.array(rows, type=table.schema.field("pixel_values").type),
    )
    pq.write_table(table, shard)
    _card(f"download_size: {size}", f"download_size: {shard.stat().st_size}")(f)


def _set_label(value: int):
    """Row 0 of ipc1 relabelled `value` (the download size in the card kept true)."""

    def relabel(f: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        shard = f / "ipc1/train-00000-of-00001.parquet"
        table, size = pq.read_table(shard), shard.stat().st_size
        labels = table.column("label").to_pylist()
        labels[0] = value
        i = table.schema.get_field_index("label")
        pq.write_table(
            table.set_column(i, table.schema.field("label"), pa.array(labels, table.schema.field("label").type)), shard
        )
        _card(f"download_size: {size}", f"download_size: {shard.stat().st_size}")(f)

    return relabel


def _split_index(value: int):
    """The split sidecar's last test index set to `value`, its seal recomputed (a forgery, not an edit)."""

    def forge(f: Path) -> None:
        from distiller.core.files import load_safetensors, save_safetensors

        path = f / "preprocessing/split.safetensors"
        tensors, meta = load_safetensors(path, "distiller.split", "1", "split")
        tensors["test_indices"][-1] = value
        extra = {k: v for k, v in meta.items() if k not in ("format", "format_version", "seal")}
        save_safetensors(path, tensors, "distiller.split", "1", extra)

    return forge


_ARCH = lambda **kw: _front(lambda d: d["distiller"]["protocol"]["architecture"].update(kw))

FOLDERS = {
    "data_files leave the folder": (
        _card("path: ipc1/train-*.parquet", "path: ../../*/ipc1/*.parquet"),
        "inside the folder",
    ),
    "empty data_files": (_card("path: ipc1/train-*.parquet", "path: ''"), "inside the folder"),
    "configs as a string": (_front(lambda d: d.update(configs="ipc1")), "configs"),
    "budgets as a number": (_front(lambda d: d["distiller"].update(budgets=3)), "distiller.budgets"),
    "accuracy above 1": (_card("      mean: 0.", "      mean: 1."), "must be <= 1"),
    "negative std": (_card("      std: 0.", "      std: -0."), "must be >= 0"),
    "NaN baseline": (_front(lambda d: d["distiller"]["full_data"].update(mean=float("nan"))), "finite"),
    "mean disagrees with runs": (_card("      mean: 0.", "      mean: 0.0"), "say otherwise"),
    "download_size off": (_card("  download_size: ", "  download_size: 1"), "dataset_info says"),
    "NaN pixels": (_nan_pixels, "NaN or infinite"),
    "a stray .env": (lambda f: (f / ".env").write_text("HF_TOKEN=x\n"), ".env: a file the card does not declare"),
    "an editor backup": (lambda f: (f / "README.md~").write_text("old"), "README.md~"),
    "a FIFO sidecar": (
        lambda f: ((f / "preprocessing/split.safetensors").unlink(), os.mkfifo(f / "preprocessing/split.safetensors")),
        "not a regular file",
    ),
    "a symlinked file": (lambda f: (f / "images/x.png").symlink_to("/etc/hostname"), "symbolic links"),
    "data_files '.'": (_card("path: ipc1/train-*.parquet", "path: ."), "inside the folder"),
    "card mean not the sidecar's": (
        _front(lambda d: d["distiller"]["preprocessing"].update(mean=[0.9])),
        "is not the card's [0.9]",
    ),
    "split count off": (_front(lambda d: d["distiller"]["source"]["test_split"].update(count=7)), "of 7 indices"),
    "split tensor renamed": (_front(lambda d: d["distiller"]["source"]["test_split"].update(tensor="nope")), "'nope'"),
    "a foreign normalisation sidecar": (
        lambda f: _plain_safetensors(f / "preprocessing/normalization.safetensors"),
        "sidecar missing or unreadable",
    ),
    "a grid that is no image": (lambda f: (f / "images/grid.png").write_bytes(b"\x89PNG junk"), "not a readable image"),
    "a source distiller does not read": (
        _front(lambda d: d["distiller"]["source"].update(name="nope")),
        "distiller.source.name 'nope' is no source distiller reads",
    ),
    "dataset_size 10**18": (
        _front(lambda d: d["dataset_info"][0].update(dataset_size=10**18)),
        "dataset_info dataset_size is 1000000000000000000",
    ),
    "num_bytes 10**18": (
        _front(lambda d: d["dataset_info"][1]["splits"][0].update(num_bytes=10**18)),
        "num_bytes is 1000000000000000000",
    ),
    "dataset_info for one config only": (
        _front(lambda d: d.update(dataset_info=d["dataset_info"][:1])),
        "dataset_info describes ['ipc1']",
    ),
    "a network too deep for its input": (_ARCH(depth=5), "architecture.depth 5 is too deep for 8x8"),
    "a network of width 0": (_ARCH(width=0), "architecture.width must be >= 1"),
    "a first padding distiller does not use": (_ARCH(first_padding=2), "first_padding is 2, but the convnet"),
    "a GELU": (_ARCH(activation="gelu"), "activation must be one of 'relu'"),
    "a parameter count on a convnet": (_ARCH(parameters=12), "parameters is 12, but the convnet it describes has None"),
    "a cosine schedule": (
        _front(lambda d: d["distiller"]["protocol"].update(lr_schedule="cosine")),
        "lr_schedule must be one of",
    ),
    "a test index beyond the source": (_split_index(5000), "test index 5000 is beyond digits's 1797 images"),
    "a label outside the classes": (_set_label(42), "a label outside 0..9"),
    "a class short of rows": (_set_label(1), "not 1 rows of every class"),
}


def _plain_safetensors(path: Path) -> None:
    """A safetensors file that is not distiller's: the right tensor names, no format, no seal."""
    import torch
    from safetensors.torch import save_file

    save_file({"mean": torch.zeros(1), "std": torch.ones(1)}, str(path))


@pytest.mark.parametrize("case", sorted(FOLDERS))
def test_hostile_folders_are_refused_by_validate_and_publish(folder: Path, tmp_path: Path, case):
    damage, fragment = FOLDERS[case]
    damage(folder)
    refused(runner.invoke(app, ["validate", str(folder)]), fragment)
    dest = tmp_path / "published"
    refused(runner.invoke(app, ["publish", str(folder), "--to", "dir", str(dest)]), fragment)
    assert not dest.exists() and not list(tmp_path.glob(".published.*"))


def _leaves(node, path=()):
    """Every (path, value) of a leaf in nested mappings and lists."""
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*path, k))]
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in _leaves(v, (*path, i))]
    return [(path, node)]


_hostile_values = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_subnormal=False),
    st.text(max_size=12),
    st.none(),
    st.booleans(),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(
    max_examples=int(os.environ.get("DISTILLER_FUZZ", 60)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_card_value_replaced_validates_or_fails_with_one_line(folder: Path, data):
    """Any one value of the card's front matter replaced by anything: `validate` passes or refuses in one line."""
    card = folder / "README.md"
    original = card.read_text()
    try:
        _, front, body = original.split("---\n", 2)
        tree = yaml.safe_load(front)
        path, _ = data.draw(st.sampled_from(_leaves(tree)), label="leaf")
        node = tree
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = data.draw(_hostile_values, label="value")
        card.write_text(f"---\n{yaml.safe_dump(tree, sort_keys=False)}---\n{body}")
        result = runner.invoke(app, ["validate", str(folder)])
        assert result.exit_code in (0, 2), result.output
        if result.exit_code == 2:
            refused(result)
    finally:
        card.write_text(original)


@pytest.mark.parametrize("link", ["loop", "dangling"])
def test_publish_to_a_destination_that_is_a_symlink_is_refused(folder: Path, tmp_path: Path, link):
    dest = tmp_path / "dest"
    dest.symlink_to(dest if link == "loop" else tmp_path / "nowhere")
    refused(runner.invoke(app, ["publish", str(folder), "--to", "dir", str(dest)]), str(dest), "symbolic link")


def test_a_folder_that_is_a_symlink_is_refused(folder: Path, tmp_path: Path):
    link = tmp_path / "link"
    link.symlink_to(folder, target_is_directory=True)
    refused(runner.invoke(app, ["validate", str(link)]), "symbolic link")


def test_glob_characters_in_the_folder_path_are_plain_characters(folder: Path, tmp_path: Path):
    odd = tmp_path / "we[ir]d* name"
    shutil.copytree(folder, odd)
    result = runner.invoke(app, ["validate", str(odd)])
    assert result.exit_code == 0 and "valid" in result.stdout, result.output


def test_packaged_and_published_files_are_world_readable(folder: Path, tmp_path: Path):
    dest = tmp_path / "published"
    assert runner.invoke(app, ["publish", str(folder), "--to", "dir", str(dest)]).exit_code == 0
    for root in (folder, dest):
        for path in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
    assert sorted(p.relative_to(dest) for p in dest.rglob("*")) == sorted(
        p.relative_to(folder) for p in folder.rglob("*")
    )


# ---------------------------------------------------------------------------------------------------------------------
# 4. disk full and read-only filesystems, in every stage and in publish --to dir


def _snapshot(root: Path) -> dict[str, bytes]:
    skip = (".checkpoints", "logs", ".distiller.lock")
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in skip
    }


def _failing(code: int):
    """A call failing as the kernel's do: `fsync` and `write` name no file, `mkstemp` and `mkdtemp` the one made."""

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), *([os.path.join(kwargs["dir"], "x")] if "dir" in kwargs else []))

    return fail


def _full_writer(*args, **kwargs):
    """safetensors' writer on a full disk: it raises its own error, not an OSError."""
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


FAULTS = {errno.ENOSPC: "the disk is full", errno.EROFS: "read-only"}
PATCHES = {  # fault -> what fails
    "read-only": ("distiller.core.files.tempfile.mkstemp", _failing(errno.EROFS), errno.EROFS),
    "fsync ENOSPC": ("distiller.core.files.os.fsync", _failing(errno.ENOSPC), errno.ENOSPC),
    "writer ENOSPC": ("safetensors.torch.save_file", _full_writer, errno.ENOSPC),
}


def _names_an_output(result, root: Path, code: int) -> None:
    """One line naming a path of the project (an output or a checkpoint), not a temporary or a file descriptor."""
    refused(result, FAULTS[code], os.strerror(code))
    named = result.stderr.split("cannot write or read ", 1)[1].split(":", 1)[0]
    assert named.startswith(str(root)) and not named.endswith(".tmp"), result.stderr


@pytest.mark.parametrize(
    ("name", "fault"),
    [(n, f) for n in STAGES for f in sorted(PATCHES) if f != "writer ENOSPC" or n not in ("evaluate", "package")],
)
def test_a_failing_disk_leaves_the_previous_outputs_whole(project: Path, name, fault):
    """Every output is made in a temporary file or folder, fsynced and renamed: fail the making, the fsync or the
    safetensors writer (which raises its own error; evaluate and package write no safetensors) and the stage stops
    with one line naming the output, leaving every earlier output byte for byte."""
    target, fail, code = PATCHES[fault]
    before = _snapshot(project)
    with patch(target, fail), patch("distiller.core.files.tempfile.mkdtemp", _failing(code)):
        _names_an_output(stage(name, project), project, code)
    assert _snapshot(project) == before
    assert not list(project.rglob("*.tmp"))


def test_publish_to_dir_on_a_failing_disk_names_the_destination(folder: Path, tmp_path: Path):
    """shutil.copyfile on a full disk names the source first and the destination second (as sendfile fails): the
    one line names the destination's file."""
    dest, real = tmp_path / "out" / "published", os.sendfile

    def sendfile(out_fd, in_fd, offset, count):  # the destination's disk is full, not validation's scratch space
        if not os.readlink(f"/proc/self/fd/{out_fd}").startswith(str(tmp_path / "out")):
            return real(out_fd, in_fd, offset, count)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with patch("shutil.os.sendfile", sendfile):
        result = runner.invoke(app, ["publish", str(folder), "--to", "dir", str(dest)])
    _names_an_output(result, dest, errno.ENOSPC)
    assert not dest.exists() and list((tmp_path / "out").iterdir()) == []


FULL_DISK = r"""
import errno, gc, json, os, shutil, sys
from pathlib import Path
from typer.testing import CliRunner
from distiller.cli.app import app

disk, source, cases = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
skip = (".checkpoints", "logs", ".distiller.lock")
snap = lambda root: {
    str(p.relative_to(root)): p.read_bytes()
    for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] not in skip
}
results = {}
for case, args in cases.items():
    project = disk / "project"
    shutil.copytree(source, project)
    gc.collect()
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(1 << 16))
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    os.truncate(disk / "filler", (disk / "filler").stat().st_size - 8192)  # room for the lock file, not an output
    result = CliRunner().invoke(app, [a.replace("DISK", str(disk)) for a in args])
    os.unlink(disk / "filler")
    results[case] = {
        "exit": result.exit_code,
        "stderr": result.stderr,
        "same": snap(project) == snap(source),
        "left": sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if p.name.endswith(".tmp")),
        "published": (disk / "published").exists(),
    }
    shutil.rmtree(project)
print(json.dumps(results))
"""
FULL_CASES = {
    **{name: [name, "--params", "PARAMS", "--root", "DISK/project"] for name in STAGES},
    "publish --to dir": ["publish", "DISK/project/datasets/NAME", "--to", "dir", "DISK/published"],
    "publish experts --to dir": ["publish", "DISK/project/artifacts/experts", "--to", "dir", "DISK/published"],
}


@pytest.fixture(scope="module")
def on_a_full_disk(finished: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every stage and `publish --to dir` run on a real full filesystem: a 16 MiB tmpfs, mounted in a user and mount
    namespace of the test's own (no privileges needed), holding a copy of the finished project and a file that
    leaves 8 KiB free. Skipped where the kernel allows no such namespace."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare(1) to mount a small filesystem with")
    disk = tmp_path_factory.mktemp("disk")
    name = next((finished / "datasets").iterdir()).name
    params = str(disk / "project" / "params.yaml")
    cases = {k: [a.replace("NAME", name).replace("PARAMS", params) for a in v] for k, v in FULL_CASES.items()}
    mount = 'mount -t tmpfs -o size=16m tmpfs "$1" && shift && exec "$@"'
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, "sh", str(disk)]
    if subprocess.run([*cmd, "true"], capture_output=True).returncode != 0:
        pytest.skip("no user and mount namespace here to mount a small filesystem in")
    run = [*cmd, sys.executable, "-c", FULL_DISK, str(disk), str(finished), json.dumps(cases)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return {k: {**v, "disk": str(disk)} for k, v in json.loads(done.stdout.splitlines()[-1]).items()}


@pytest.mark.parametrize("case", sorted(FULL_CASES))
def test_a_really_full_disk_is_one_line_naming_the_output(on_a_full_disk: dict, case):
    """No patch: the kernel's ENOSPC, from Python's writes and from safetensors' own writer alike, is one line
    naming the output (the destination, for publish), exit 2; every earlier output stays byte for byte and no
    temporary file or partial copy is left."""
    got = on_a_full_disk[case]
    lines = got["stderr"].strip().splitlines()
    assert got["exit"] == 2 and len(lines) == 1 and "No space left on device" in lines[0], got
    named = lines[0].split("cannot write or read ", 1)[1].split(":", 1)[0]
    where = "published" if case.startswith("publish") else "project"
    assert named.startswith(f"{got['disk']}/{where}") and not named.endswith(".tmp"), lines[0]
    assert got["same"] and not got["left"] and not got["published"], got


TORCH_OOM = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
    "2559999997440 bytes. Error code 12 (Cannot allocate memory)"
)


@pytest.mark.parametrize("error", [RuntimeError(TORCH_OOM), MemoryError()], ids=["torch", "python"])
def test_running_out_of_memory_is_one_line_naming_the_size_params(project: Path, error):
    before = _snapshot(project)

    def allocate(*args, **kwargs):
        raise error

    with patch("distiller.methods.mtt.distill", allocate):
        refused(stage("distill", project), "out of memory", "distill.ipc", "data.resolution")
    assert _snapshot(project) == before


def test_a_root_that_is_a_file_is_one_line(tmp_path: Path, tiny_yaml: Path):
    (tmp_path / "file").write_text("")
    result = runner.invoke(app, ["download", "--params", str(tiny_yaml), "--root", str(tmp_path / "file")])
    refused(result, "--root", "not a directory")


# ---------------------------------------------------------------------------------------------------------------------
# 5. resources

CORES = len(os.sched_getaffinity(0))
NPROC = {"expert.nproc": "expert-buffer", "distill.nproc": "distill", "evaluate.nproc": "evaluate"}


@pytest.mark.parametrize("key", sorted(NPROC))
def test_more_processes_than_the_machine_runs_are_refused(project: Path, key):
    """Each nproc key, one rule: above this machine's cores (or GPUs) it is one line naming the key and the cap, and
    no process starts; at the cap the stage starts its torchrun job (RaT-BPTT's distill: MTT's is one process)."""
    extra = ["-S", "distill.method=ratbptt"] if key == "distill.nproc" else []
    with patch("distiller.stages.runner.launch") as launch:
        refused(stage(NPROC[key], project, "-S", f"{key}=1000", *extra), f"{key} 1000", f"at most {CORES}", "CPU")
        refused(stage(NPROC[key], project, "-S", f"{key}={CORES + 1}", *extra), key, f"({CORES} CPU cores)")
        launch.assert_not_called()
        if CORES > 1:
            assert stage(NPROC[key], project, "-S", f"{key}={CORES}", *extra).exit_code == 0
            assert launch.call_args.args[:2] == (NPROC[key], CORES)


def test_nproc_is_capped_by_the_gpus_on_cuda_and_mtt_distills_in_one_process():
    from distiller.stages.runner import processes

    assert processes(params_from_dict({**TINY, "distill": {"nproc": CORES}}), "distill") == 1  # MTT: one unit
    assert processes(params_from_dict({**TINY, "distill": {"nproc": 1000}}), "download") == 1
    gpus = {**TINY, "device": "cuda", "expert": {"nproc": 2}}
    with (
        patch("distiller.core.runtime.resolve_device", return_value=torch.device("cuda")),
        patch("torch.cuda.device_count", return_value=1),
        pytest.raises(DistillerError, match=r"expert.nproc 2: .*\(1 GPUs, one per process\)"),
    ):
        processes(params_from_dict(gpus), "expert_buffer")


# ---------------------------------------------------------------------------------------------------------------------
# 6. concurrency


def test_a_second_run_in_the_same_project_refuses(project: Path):
    layout = Layout(project)
    with project_lock(layout.lock):
        refused(stage("download", project), "another distiller stage is running", str(os.getpid()))
    assert stage("download", project).exit_code == 0  # released with the first


def test_tiny_params_are_valid():
    assert params_from_dict(TINY)
