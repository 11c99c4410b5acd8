"""The main job on the built-in default: draw the scene world and segment it with the shipped segmenter,
dissect a layer of the shipped scene GAN, learn which of its units cause one class (ACE), repair the
GAN's artifacts with FD as proof, and write one HTML report linking everything under runs/demo/."""

from __future__ import annotations

import numpy as np
import torch

from gandissect.config import AceConfig, DemoConfig, DissectConfig, RepairConfig, load_config
from gandissect.core.runs import (check_wandb_login, finish_run, finish_wandb, runs_root, set_summary, start_run,
                                  wandb_run)
from gandissect.data import scenes
from gandissect.io import image_grid, save_image, write_json
from gandissect.models.segmenter import SceneSegmenter, iou_metric, iou_summary
from gandissect.pipelines import run_ace_pipeline, run_repair_pipeline
from gandissect.report.html import picture, swatch, table, write_report
from gandissect.report.repair import fd_verdict
from gandissect.steps import intervene, repair
from gandissect.steps.dissect import run_dissection


def run_demo(cfg: DemoConfig) -> dict:
    # the ACE and repair configs are read (and checked) before any work: a bad ace_set or repair_set stops the demo
    # at once, not after the parts before it have run
    run_dir = runs_root() / cfg.name
    acfg = _ace_config(cfg, run_dir) if cfg.ace_config and cfg.dissect_n > 0 else None
    rcfg = _repair_config(cfg, run_dir) if cfg.repair_config else None
    for sub in filter(None, (acfg, rcfg)):
        check_wandb_login(sub.wandb)
    run_dir = start_run(cfg.name, cfg)
    segmenter = SceneSegmenter.load(cfg.segmenter)
    pairs = [scenes.render_scene(cfg.seed, i, cfg.size) for i in range(cfg.n)]
    images = torch.stack([scenes.to_tensor(im) for im, _ in pairs])
    truth = np.stack([lab for _, lab in pairs])
    with torch.no_grad():
        predicted = segmenter.labels(images)[:, 0].numpy()

    grids = {
        "scenes.png": image_grid(np.stack([im for im, _ in pairs])),
        "labels_true.png": image_grid(scenes.colorize(truth)),
        "labels_predicted.png": image_grid(scenes.colorize(predicted)),
    }
    for name, grid in grids.items():
        save_image(run_dir / name, grid, scale=3)

    metric = iou_metric(segmenter.classes)
    metric.update(torch.from_numpy(predicted), torch.from_numpy(truth))
    quality = {**iou_summary(metric, segmenter.classes), "n": cfg.n, "seed": cfg.seed, "size": cfg.size}
    stats = scenes.world_statistics(cfg.seed, cfg.stats_n, cfg.size)
    results = {"segmenter": cfg.segmenter, "segmentation": quality, "world": stats}
    pipeline = []  # report sections of the GAN pipeline, the main job's result first
    if rcfg is not None:
        results["repair"], html, better = _repair(rcfg, run_dir)
        verdict = {True: "FD better than the original", False: "FD not better than the original",
                   None: "nothing ablated"}[better]
        pipeline.append((f"Repair: artifact units switched off, {verdict}", html))
    if cfg.dissect_n > 0:
        results["dissection"], html = _dissect(cfg, run_dir)
        pipeline.append(("Dissection: which units draw which classes", html))
        if acfg is not None:
            results["ace"], html = _ace(acfg, run_dir)
            pipeline.append((f"Intervention: which units cause {results['ace']['class']}", html))
    write_json(run_dir / "results.json", results)

    rows = [[name, scenes.CATEGORIES[name], stats["classes"][name]["pixel_share"],
             stats["classes"][name]["presence_rate"], quality["per_class_iou"][name]]
            for name in scenes.CLASSES[1:]]
    html_rows = [[swatch(scenes.LABEL_COLORS[i + 1]) + row[0], *row[1:]] for i, row in enumerate(rows)]
    world = [
        ("The world and its segmenter", f"<p>{cfg.n} scenes of world seed {cfg.seed} at {cfg.size}px, drawn with "
                                        f"exact labels, and the labels predicted by <code>{cfg.segmenter}</code>. "
                                        f"Mean IoU over these scenes: <b>{quality['miou']:.4f}</b> "
                                        "(a class absent from them shows no IoU). "
                                        "Numbers: <a href='results.json'>results.json</a>; settings: "
                                        "<a href='config.yaml'>config.yaml</a>.</p>"),
        ("Scenes", picture("scenes.png", "generated scenes")),
        ("True labels", picture("labels_true.png", "exact labels drawn by the world")),
        ("Predicted labels", picture("labels_predicted.png", "the shipped segmenter's labels")),
        ("Classes", table(["class", "category", f"pixel share ({cfg.stats_n} scenes)", "presence rate", "IoU"],
                          html_rows)),
    ]
    write_report(run_dir / "index.html", "gandissect demo: dissect, intervene on and repair the shipped scene GAN",
                 pipeline + world)

    run = wandb_run(run_dir, cfg, "demo")
    if run is not None:
        import wandb

        run.log({"miou": quality["miou"],
                 "classes": wandb.Table(columns=["class", "category", "pixel_share", "presence_rate", "iou"],
                                        data=rows),
                 **{f"grid/{k[:-4]}": wandb.Image(v) for k, v in grids.items()}})
        set_summary(run, {"miou": quality["miou"]})
        finish_wandb(run, run_dir)
    finish_run(run_dir)
    summary = {"run_dir": str(run_dir), "miou": quality["miou"]}
    if "dissection" in results:
        d = results["dissection"]
        summary["dissection"] = {k: d[k] for k in ("layer", "n", "units", "interpretable_units", "report")}
    for part in ("ace", "repair"):
        if part in results:
            summary[part] = results[part]
    return summary


def _dissect(cfg: DemoConfig, run_dir) -> tuple[dict, str]:
    """Dissect one layer of the shipped GAN into run_dir/dissect; returns its summary and a report section."""
    dcfg = DissectConfig(name=f"{cfg.name}-dissect", generator=cfg.generator, segmenter=cfg.segmenter,
                         layers=[cfg.dissect_layer], n=cfg.dissect_n, resume=False, wandb=cfg.wandb)
    layer = run_dissection(dcfg, run_dir=run_dir / "dissect")["layers"][cfg.dissect_layer]
    best = sorted(layer["units_detail"], key=lambda u: -u["iou"])[:6]
    rows = [[u["unit"], u["label"], u["category"], u["iou"], picture(f"dissect/{u['strip']}", width=700)]
            for u in best]
    html = (f"<p>{cfg.dissect_layer} of <code>{cfg.generator}</code> over {cfg.dissect_n} latents: "
            f"<b>{layer['interpretable_units']}</b> of {layer['units']} units have IoU &gt; "
            f"{dcfg.iou_threshold} with a class. Every unit: <a href='dissect/index.html'>dissect/index.html</a>, "
            "<a href='dissect/dissect.json'>dissect.json</a>.</p>"
            + picture(f"dissect/{layer['chart']}", "interpretable units per class")
            + table(["unit", "label", "category", "IoU", "top images (region outlined)"], rows))
    summary = {"layer": cfg.dissect_layer, "n": cfg.dissect_n, "units": layer["units"],
               "interpretable_units": layer["interpretable_units"], "per_class": layer["per_class"],
               "report": "dissect/index.html"}
    return summary, html


def _ace_config(cfg: DemoConfig, run_dir) -> AceConfig:
    return load_config(AceConfig, cfg.ace_config, [
        f"name={cfg.name}-ace", f"generator={cfg.generator}", f"segmenter={cfg.segmenter}",
        f"layer={cfg.dissect_layer}", f"dissection={run_dir / 'dissect'}", f"wandb.mode={cfg.wandb.mode}",
        *cfg.ace_set])


def _repair_config(cfg: DemoConfig, run_dir) -> RepairConfig:
    return load_config(RepairConfig, cfg.repair_config, [
        f"name={cfg.name}-repair", f"generator={cfg.generator}", f"segmenter={cfg.segmenter}",
        f"layer={cfg.dissect_layer}", f"wandb.mode={cfg.wandb.mode}", *cfg.repair_set])


def _ace(acfg: AceConfig, run_dir) -> tuple[dict, str]:
    """The ACE of one class at the dissected layer (run_dir/ace), ranked from the demo's dissection."""
    result = run_ace_pipeline(acfg, run_dir=run_dir / "ace")
    removal = result["removal"]
    rows = [[f"{name.upper()} ranking", *[removal[name].get(f"at_{k}") for k in (5, 20)]] for name in ("iou", "ace")]
    html = (f"<p>Units of {acfg.layer} ranked by IoU with <i>{acfg.class_name}</i> (dissection) and by the learned "
            f"intervention vector alpha (ACE ranking, {acfg.steps} Adam steps): the share of {acfg.class_name} "
            f"pixels that disappear when the top units are ablated, over {acfg.n} held-out latents. "
            "Everything: <a href='ace/index.html'>ace/index.html</a>.</p>"
            + table(["ranking", "removed, top 5", "removed, top 20"], rows)
            + picture("ace/removal.png", "removal curves"))
    return {**intervene.summary(result), "report": "ace/index.html"}, html


def _repair(rcfg: RepairConfig, run_dir) -> tuple[dict, str, bool | None]:
    """Repair the shipped GAN at the dissected layer (run_dir/repair); also whether its FD is lower."""
    result = run_repair_pipeline(rcfg, run_dir=run_dir / "repair")
    fd = result["fd"]
    verdict, better = fd_verdict(fd)
    rows = [["original", fd["original"]], ["repaired", fd["repaired"]],
            [f"random ablations (mean +- std of {len(fd['random'])})",
             f"{fd['random_mean']:.4f} +- {fd['random_std'] or 0:.4f}" if fd["random"] else None]]
    html = (f"<p>Units of {rcfg.layer} that draw what the discriminator finds fake: {result['chosen_units']}. "
            f"{fd['name']} over {fd['n']} seeded latents (the same for every generator; lower is better):</p>"
            + table(["generator", fd["name"]], rows)
            + f"<p><b>Verdict:</b> {verdict}.</p>"
            + picture("repair/before_after.png", "rows: original, repaired, random ablation of as many units")
            + "<p>Artifact maps, unit images, the repaired checkpoint and every number: "
              "<a href='repair/index.html'>repair/index.html</a>.</p>")
    return {**repair.summary(result, run_dir / "repair"), "report": "repair/index.html"}, html, better
