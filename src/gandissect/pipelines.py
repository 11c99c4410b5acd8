"""Commands that chain steps: the steps stand side by side, and only these functions (with the demo and the
command line) put one's output into another's input.

- ``run_ace_pipeline``: the dissection that ranks the units (found, or run into ``<ace run>/dissect``), then ACE.
- ``run_repair_pipeline``: the artifact segmenter, its dissection at the layer (``<repair run>/dissect``), then
  the repair.
- ``run_compare_pipeline``: a dissection of each generator to compare (all with one setting), then the comparison.
- ``run_paint_prepare``: a dissection of the paint layers, ACE runs of the object and part classes, then the
  concepts file the paint server reads.

Under several processes every process runs the same chain; a step's outputs are written by rank 0 and read by the
others after the barrier that ends the step (``core.distributed``).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch.nn as nn

from gandissect.config import (AceConfig, CompareConfig, DissectConfig, PaintPrepareConfig, RepairConfig, WandbConfig,
                               load_config, to_dict)
from gandissect.core import distributed
from gandissect.core.runs import (finish_run, finish_wandb, module_digest, runs_root, set_summary, start_run,
                                  use_model_artifact, wandb_run)
from gandissect.errors import GandissectError
from gandissect.io import write_json
from gandissect.steps import artifacts, compare, intervene, repair
from gandissect.steps.dissect import run_dissection
from gandissect.metrics.intervention import removal_curve
from gandissect.models.generators import generator_identity, open_generator
from gandissect.models.segmenter import load_segmenter
from gandissect.steps.paint.concepts import build_concepts, iou_order


def _recorded_settings(path: Path, **wanted) -> dict | None:
    """The settings of the finished dissection at ``path`` when they hold every ``wanted`` value, else None."""
    if not path.is_file():
        return None
    settings = json.loads(path.read_text()).get("settings", {})
    return settings if all(settings.get(key) == value for key, value in wanted.items()) else None


def _dissection_holds(path: Path, cfg: AceConfig, generator_id: str) -> bool:
    """Whether the ACE run's own dissection was made for these weights, layer, latents and segmenter file."""
    settings = _recorded_settings(path, generator_sha256=generator_id, n=cfg.dissect_n, seed=cfg.dissect_seed,
                                  segmenter=cfg.segmenter)
    return settings is not None and cfg.layer in settings.get("layers", [])


def _given_dissection(cfg: AceConfig) -> Path:
    """``cfg.dissection``: a run directory (or its dissect.json), or a run name under runs/."""
    given = Path(cfg.dissection)
    if given.suffix == ".json" or given.is_dir() or "/" in cfg.dissection:
        return given if given.suffix == ".json" else given / "dissect.json"
    return runs_root() / cfg.dissection / "dissect.json"


def run_ace_pipeline(cfg: AceConfig, run_dir: Path | None = None, generator: nn.Module | None = None,
                     segmenter=None) -> dict:
    """ACE of ``cfg.class_name`` at ``cfg.layer``, ranked from ``cfg.dissection`` when that has the layer (of these
    weights), else from a dissection of ``dissect_n`` latents run into ``<run_dir>/dissect``."""
    run_dir = Path(run_dir) if run_dir is not None else runs_root() / cfg.name
    if segmenter is None and not Path(cfg.segmenter).is_file():  # hf: or a factory: loaded once for every step
        segmenter = load_segmenter(cfg.segmenter)
    intervene.check_request(cfg, generator, segmenter)
    generator_id = generator_identity(cfg, generator)
    given = _given_dissection(cfg)
    if given.is_file() and json.loads(given.read_text()).get("layers", {}).get(cfg.layer) is not None:
        dissection = given  # run_ace refuses it, naming the file, when it dissects other weights
    else:
        dissection = run_dir / "dissect" / "dissect.json"
        if not _dissection_holds(dissection, cfg, generator_id):
            dcfg = DissectConfig(name=f"{cfg.name}-dissect", generator=cfg.generator, segmenter=cfg.segmenter,
                                 truncation=cfg.truncation, allow_pickle=cfg.allow_pickle,
                                 layers=[cfg.layer], n=cfg.dissect_n, seed=cfg.dissect_seed, batch_size=32,
                                 resume=False, devices=cfg.devices, wandb=WandbConfig(mode="disabled"))
            run_dissection(dcfg, dissection.parent, generator=generator, segmenter=segmenter)
    return intervene.run_ace(cfg, dissection, run_dir, generator=generator, segmenter=segmenter)


def run_repair_pipeline(cfg: RepairConfig, run_dir: Path | None = None, generator: nn.Module | None = None) -> dict:
    """Build the artifact segmenter, dissect the artifact class at ``cfg.layer``, and repair. What an earlier run
    under the same name made with the same settings is reused (an interrupted dissection resumes); what it made
    with other settings is started over."""
    run_dir = Path(run_dir) if run_dir is not None else runs_root() / cfg.name
    plan = repair.plan_repair(cfg, generator)  # every check before anything is written
    start_run(cfg.name, cfg, root=run_dir)
    seconds, clock = {}, time.perf_counter()
    segmenter, record = artifacts.artifact_segmenter(cfg, plan.generator, plan.generator_id, run_dir)
    repair.check_signal(cfg, record)
    seconds["artifact_segmenter_s"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
    layer = _dissect_artifacts(cfg, plan.generator, segmenter, record["key"], run_dir, cfg.layer)
    seconds["artifact_dissection_s"] = round(time.perf_counter() - clock, 1)

    def dissect_later_layer(repaired_so_far: nn.Module, later: str) -> list[float]:  # route multilayer
        edits = {"edited_generator": module_digest(repaired_so_far)}
        return _dissect_artifacts(cfg, repaired_so_far, segmenter, record["key"], run_dir, later,
                                  edits)["iou_by_class"]["artifact"]
    result = repair.run_repair(cfg, plan, segmenter, record, layer, run_dir, seconds, dissect_later_layer)
    finish_run(run_dir)
    return result


def run_compare_pipeline(cfg: CompareConfig, run_dir: Path | None = None) -> dict:
    """Dissect each of ``cfg.generators`` with the ``cfg.dissect`` settings into ``<compare run>/dissect-<i>-<file>``
    (a finished dissection there of the same weights and settings is reused, an interrupted one resumes), then
    compare them after ``cfg.dissections``. Every config is read before any work."""
    run_dir = Path(run_dir) if run_dir is not None else runs_root() / cfg.name
    configs = [load_config(DissectConfig, cfg.dissect, [*cfg.dissect_set, f"generator={generator}",
                                                        f"name={cfg.name}-dissect"])
               for generator in cfg.generators]
    identities = [generator_identity(dcfg) for dcfg in configs]  # a missing file stops here, before any work
    compare.read_inputs(cfg)  # and missing runs or labels that do not fit
    dissected = []
    for i, (dcfg, identity) in enumerate(zip(configs, identities), start=1):
        target = run_dir / f"dissect-{i}-{Path(dcfg.generator).stem}"
        dcfg.wandb = WandbConfig(mode="disabled")  # the comparison's own run is the one to look at
        if _recorded_settings(target / "dissect.json", generator_sha256=identity, layers=list(dcfg.layers), n=dcfg.n,
                              seed=dcfg.seed, segmenter=dcfg.segmenter, quantile=dcfg.quantile,
                              iou_threshold=dcfg.iou_threshold) is None:
            # what is there was made with other settings or weights: start over rather than resume it
            dcfg.resume = (target / "tally.pt").is_file() and not (target / "dissect.json").is_file()
            run_dissection(dcfg, target)
        dissected.append(target / "dissect.json")
    return compare.run_compare(cfg, run_dir, dissected)


def _dissect_artifacts(cfg: RepairConfig, generator: nn.Module, segmenter, segmenter_key: dict, run_dir: Path,
                       layer: str, edits: dict | None = None) -> dict:
    """The artifact class's dissection at ``layer`` (its dissect.json entry), in ``run_dir/dissect`` (the
    repaired layer) or ``run_dir/dissect-<layer>`` (a later layer of route multilayer, of the generator as
    repaired so far: ``edits`` identifies it)."""
    dissect_dir = run_dir / ("dissect" if layer == cfg.layer else f"dissect-{layer}")
    key = {"artifact_segmenter": segmenter_key, "layer": layer, "n": cfg.dissect_n, "seed": cfg.dissect_seed,
           **(edits or {})}
    key_path = dissect_dir / "repair_key.json"

    def start_over_if_stale() -> None:  # a tally of other settings: this run's own cache
        if not key_path.is_file() or json.loads(key_path.read_text()) != key:
            (dissect_dir / "tally.pt").unlink(missing_ok=True)
            write_json(key_path, key)
    distributed.rank_zero_first(start_over_if_stale)
    dcfg = DissectConfig(name=f"{cfg.name}-artifact-dissection", generator=cfg.generator,
                         truncation=cfg.truncation, allow_pickle=cfg.allow_pickle,
                         segmenter=str(run_dir / "artifact_segmenter.safetensors"), layers=[layer],
                         n=cfg.dissect_n, seed=cfg.dissect_seed, resume=True, devices=cfg.devices,
                         wandb=WandbConfig(mode="disabled"))  # one W&B run per repair: the repair's own
    result = run_dissection(dcfg, run_dir=dissect_dir, generator=generator, segmenter=segmenter)
    if not result:  # a process other than rank 0: read what rank 0 wrote (run_dissection ends with a barrier)
        result = json.loads((dissect_dir / "dissect.json").read_text())
    return result["layers"][layer]


def run_paint_prepare(cfg: PaintPrepareConfig, run_dir: Path | None = None) -> dict:
    """The paint concepts file: dissect ``cfg.layers`` (into ``<run>/dissect``), run ACE for every class of
    ``cfg.ace_categories`` at each layer of ``cfg.ace_layers`` (``<run>/ace-<layer>-<class>``; a finished one of
    the same settings is reused; the other layers' brush strengths come from removal curves of their IoU rankings),
    then write ``cfg.out`` (and ``<run>/concepts.json``)."""
    run_dir = Path(run_dir) if run_dir is not None else runs_root() / cfg.name
    started = time.perf_counter()
    start_run(cfg.name, cfg, root=run_dir)
    dcfg = DissectConfig(name=f"{cfg.name}-dissect", generator=cfg.generator, segmenter=cfg.segmenter,
                         truncation=cfg.truncation, allow_pickle=cfg.allow_pickle,
                         layers=list(cfg.layers), n=cfg.n, seed=0, resume=True,
                         wandb=WandbConfig(mode="disabled"))
    run_dissection(dcfg, run_dir / "dissect")
    dissection = json.loads((run_dir / "dissect" / "dissect.json").read_text())
    classes = [c for c in dissection["classes"] if c and dissection["categories"].get(c) in cfg.ace_categories]
    aces, skipped = [], {}
    for layer in cfg.layers if cfg.ace_layers is None else [la for la in cfg.layers if la in cfg.ace_layers]:
        for name in classes:
            acfg = load_config(AceConfig, None, [f"name={cfg.name}-ace-{layer}-{name}", f"generator={cfg.generator}",
                                                 f"segmenter={cfg.segmenter}", f"layer={layer}", f"class_name={name}",
                                                 f"truncation={'null' if cfg.truncation is None else cfg.truncation}",
                                                 f"allow_pickle={cfg.allow_pickle}",
                                                 f"dissection={run_dir / 'dissect'}", "wandb.mode=disabled",
                                                 *cfg.ace_set])
            ace_dir = run_dir / f"ace-{layer}-{name}"
            done, dissection_json = ace_dir / "ace.json", run_dir / "dissect" / "dissect.json"
            wanted = {**to_dict(acfg), "dissection": str(dissection_json)}  # as run_ace records its settings
            if done.is_file() and {k: json.loads(done.read_text())["settings"].get(k) for k in wanted} == wanted:
                aces.append(json.loads(done.read_text()))
                continue
            try:
                aces.append(intervene.run_ace(acfg, dissection_json, ace_dir))
            except GandissectError as err:  # e.g. a class the generator never draws: its IoU ranking is used
                skipped[f"{layer}/{name}"] = str(err)
    iou_removal = {}
    for layer in [la for la in cfg.layers if la not in {a["layer"] for a in aces}]:  # strengths without ACE runs
        generator, segmenter = open_generator(cfg, "paint prepare"), load_segmenter(cfg.segmenter)
        for name in classes:
            with contextlib.suppress(GandissectError):  # a class absent from every image has no curve
                iou_removal[(layer, name)] = removal_curve(
                    generator, segmenter, layer, iou_order(dissection["layers"][layer], name),
                    segmenter.classes.index(name), seed=2, n=100, max_units=min(cfg.keep, 30))
    made_by = {"generator": cfg.generator, "generator_sha256": dissection["settings"]["generator_sha256"],
               "segmenter": cfg.segmenter, "dissection": {"n": cfg.n, "seed": 0, "run": str(run_dir)},
               "command": f"gandissect paint prepare --config <config> (run {cfg.name})", "ace_settings": cfg.ace_set,
               "ace_skipped": skipped}
    concepts = build_concepts(dissection, aces, list(cfg.layers), cfg.keep, made_by, iou_removal)
    concepts["wall_s"] = round(time.perf_counter() - started, 1)
    write_json(run_dir / "concepts.json", concepts)
    write_json(cfg.out, concepts)
    run = wandb_run(run_dir, cfg, "paint-prepare")
    if run is not None:
        set_summary(run, {"concepts": len(concepts["concepts"]), "ace_runs": len(aces), "ace_skipped": len(skipped)})
        use_model_artifact(run, cfg.generator)
        finish_wandb(run, run_dir)
    finish_run(run_dir)
    return {"run_dir": str(run_dir), "out": cfg.out, "concepts": len(concepts["concepts"]),
            "strengths": {layer: entry["strengths"]["units"] for layer, entry in concepts["layers"].items()},
            "ace_runs": len(aces), "ace_skipped": skipped, "wall_s": concepts["wall_s"]}
