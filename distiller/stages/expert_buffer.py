"""Stage expert-buffer: MTT's expert trajectories in artifacts/experts/ (an empty buffer for RaT-BPTT)."""

from __future__ import annotations

import dataclasses
import shutil

from distiller.core import distributed
from distiller.core.checkpoint import Store, fingerprint
from distiller.core.errors import DistillerError
from distiller.core.files import atomic_dir, write_sealed_json
from distiller.core.params import Params
from distiller.core.paths import Layout
from distiller.core.runtime import SILENT, Reporter, configure_torch, resolve_device
from distiller.data.prepared import Prepared, load_prepared
from distiller.methods import buffer, experts
from distiller.nets import models
from distiller.packaging import experts_hub


def run(p: Params, layout: Layout, progress: Reporter = SILENT) -> list[float]:
    """Train `expert.num_experts` experts and write their trajectories; returns their final test accuracies.

    Each expert depends only on its index, so finished experts are checkpointed whole and a rerun after a kill trains
    only the missing ones; in a torchrun job the ranks share them out and rank 0 writes (`distiller.core.distributed`).
    RaT-BPTT needs no experts: the stage then writes a manifest saying so, in no time."""
    configure_torch(p.deterministic)
    models.check_distillable(p.model)
    with distributed.world(resolve_device(p.device)) as w:
        device = w.device(resolve_device(p.device))
        data = load_prepared(layout.prepared, p.data).to(device)
        info = buffer.manifest(data, p.model, p.expert, p.augment, p.seed)
        if p.distill.method != "mtt":
            if w.root:
                with atomic_dir(layout.experts_dir) as out:
                    buffer.write_manifest(out, {**info, "skipped": f"distill.method is {p.distill.method}"}, [], [])
            return []
        if p.expert.from_:
            return _fetched(p, layout, data) if w.root else []
        what = dataclasses.replace(p.expert, checkpoint_every=0, parallel=0, nproc=1)  # not how: the same experts
        key = fingerprint(info, what, device.type, p.deterministic)  # on CUDA the mode changes the bits
        store = Store(layout.checkpoints("expert-buffer"), key, p.expert.checkpoint_every) if w.root else None
        advance = progress.task("expert buffer", p.expert.num_experts * p.expert.epochs)
        trained = experts.train_buffer(data, p.model, p.expert, p.augment, p.seed, device, store, advance, w)
        if store is None:
            for _ in trained:  # train and send this rank's share; rank 0 writes
                pass
            return []
        accuracies, seals = [], []
        with atomic_dir(layout.experts_dir) as out:
            for i, trajectory, acc in trained:
                seals.append(buffer.save_trajectory(trajectory, out / buffer.expert_file(i), info))
                accuracies.append(acc)
            buffer.write_manifest(out, info, accuracies, seals)
        store.clear()
    return accuracies


def _fetched(p: Params, layout: Layout, data: Prepared) -> list[float]:
    """`expert.from`: a published buffer, verified against this run instead of training: the data hash (which covers
    the preprocessing), the network, and every param the experts were trained with (lr, epochs, batch, DSA, seed,
    count), since the card states this run's params as theirs. From the Hub, its manifest records the commit fetched
    (`fetched`: repo, revision asked, commit)."""
    folder, fetched = experts_hub.fetch(p.expert.from_)
    info, paths = experts_hub.checked_manifest(folder)
    if info["dataset_hash"] != data.content_hash:
        raise DistillerError(
            f"expert.from {p.expert.from_}: trained on other data or preprocessing ({info['dataset']}, hash "
            f"{info['dataset_hash'][:12]}), not this run's {data.source} ({data.content_hash[:12]})"
        )
    if info["architecture"] != models.describe(p.model, data.image_shape, data.num_classes):
        raise DistillerError(
            f"expert.from {p.expert.from_}: trained with another network than model params say (model.precision "
            f"included: the experts' is {info['architecture'].get('precision', 'fp32')})"
        )
    differ = buffer.differing(info, buffer.manifest(data, p.model, p.expert, p.augment, p.seed))
    if differ:
        raise DistillerError(
            f"expert.from {p.expert.from_}: the experts were trained with other params than this run's: {differ}; "
            "set them to the buffer's, or train the experts here (expert.from '')"
        )
    with atomic_dir(layout.experts_dir) as out:
        for path in paths:
            shutil.copyfile(path, out / path.name)
        if fetched is None:
            shutil.copyfile(folder / buffer.MANIFEST, out / buffer.MANIFEST)
        else:
            write_sealed_json(out / buffer.MANIFEST, {**info, "fetched": fetched})
    return [float(a) for a in info["test_accuracy"]]


def summary(accuracies: list[float]) -> str:
    if not accuracies:
        return "no experts needed for distill.method ratbptt: wrote an empty buffer"
    return f"{len(accuracies)} experts, final held-out accuracy {min(accuracies):.2%} .. {max(accuracies):.2%}"
