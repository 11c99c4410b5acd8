"""GANPaint concepts: for each class the generator draws and each paint layer, the units a brush switches and the
level it draws them at.

A concepts file (JSON) is made once from a dissection (the IoU ranking and each unit's 0.99 quantile, its draw
value) and ACE runs (the ``<class>-ace`` ranking, used where one exists) by ``gandissect paint prepare``, and read in
milliseconds by the server. Brush strengths are unit counts per layer, chosen from the ACE runs' removal curves
(see ``strengths_from_removal``).
"""

from __future__ import annotations

import json
from pathlib import Path

from gandissect import defaults
from gandissect.errors import BadValueError, GandissectError

FORMAT = "gandissect-paint-concepts/1"
STRENGTHS = ("low", "medium", "high")
# a strength's unit count: the fewest top-ranked units whose removal reaches this share of what the most units do
STRENGTH_TARGETS = {"low": 1 / 3, "medium": 2 / 3, "high": 0.9}


def iou_order(layer_entry: dict, class_name: str) -> list[int]:
    iou = layer_entry["iou_by_class"][class_name]
    return sorted(range(len(iou)), key=lambda u: (-iou[u], u))


def strengths_from_removal(curves: list[list[float]]) -> dict:
    """Unit counts for low / medium / high from removal curves (entry k: share of the class removed by the top k+1
    units of its ACE ranking): the median curve over classes, then the fewest units reaching each target share of
    that median curve's last value."""
    if not curves:
        raise GandissectError("no ACE removal curves to choose brush strengths from")
    length = min(len(c) for c in curves)
    median = [sorted(c[k] for c in curves)[len(curves) // 2] for k in range(length)]
    top = max(median)
    counts = {}
    for name, target in STRENGTH_TARGETS.items():
        counts[name] = next(k + 1 for k, share in enumerate(median) if share >= target * top)
    return {"units": counts, "median_removal_curve": [round(v, 4) for v in median],
            "rule": "fewest top units whose removal (median over the ACE classes) reaches "
                    + ", ".join(f"{name} {target:.0%}" for name, target in STRENGTH_TARGETS.items())
                    + " of the most the curve reaches"}


def build_concepts(dissection: dict, aces: list[dict], layers: list[str], keep: int, made_by: dict,
                   iou_removal: dict | None = None) -> dict:
    """The concepts file's content from a dissect.json (with every paint layer) and ace.json results; a layer
    without ACE runs takes its brush strengths from ``iou_removal[(layer, class)]``, removal curves of IoU
    rankings."""
    iou_removal = iou_removal or {}
    classes = [c for c in dissection["classes"] if c]
    ace_by = {(a["layer"], a["class"]): a for a in aces}
    out_layers, concepts = {}, []
    for layer in layers:
        entry = dissection["layers"].get(layer)
        if entry is None:
            raise GandissectError(f"the dissection has no layer {layer!r}; it has: {', '.join(dissection['layers'])}")
        thresholds = [d["threshold"] for d in entry["units_detail"]]
        curves = [a["removal"]["ace"]["curve"] for (lay, _), a in ace_by.items() if lay == layer]
        if not curves:  # a layer without ACE runs: the removal curves of the IoU rankings, measured here
            curves = [iou_removal[(layer, name)] for name in classes if (layer, name) in iou_removal]
        strengths = strengths_from_removal(curves)
        strengths["curves_of"] = "ace rankings" if ace_by.keys() & {(layer, c) for c in classes} else "iou rankings"
        out_layers[layer] = {"shape": entry["shape"], "strengths": strengths}
        for name in classes:
            ace = ace_by.get((layer, name))
            units = (ace["rankings"]["ace"] if ace else iou_order(entry, name))[:keep]
            iou = entry["iou_by_class"][name]
            concepts.append({
                "name": name, "category": dissection["categories"].get(name, ""), "layer": layer,
                "ranking": f"{name}-{'ace' if ace else 'iou'}", "units": units,
                "draw_values": [round(float(thresholds[u]), 6) for u in units],
                "iou": [round(float(iou[u]), 6) for u in units],
                "removal_at": ({f"at_{k}": ace["removal"]["ace"].get(f"at_{k}") for k in (5, 20)} if ace else None),
                "ace_run": ace["run_dir"] if ace else None})
    return {"format": FORMAT, **made_by, "layers": out_layers, "default_layer": layers[0], "concepts": concepts}


def load_concepts(path: str | Path) -> dict:
    """A concepts file, checked: every concept names a layer of the file, its units and draw values match."""
    path = Path(path)
    if not path.is_file():
        raise BadValueError(f"concepts file {path} not found; make one with `gandissect paint prepare` or use "
                            f"{defaults.PAINT_CONCEPTS}")
    try:
        found = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadValueError(f"concepts file {path} is not valid JSON ({err})") from None
    if not isinstance(found, dict) or found.get("format") != FORMAT:
        raise BadValueError(f"{path} is not a concepts file (expected \"format\": \"{FORMAT}\")")
    missing = [k for k in ("layers", "concepts", "default_layer") if k not in found]
    if missing:
        raise BadValueError(f"concepts file {path} lacks {', '.join(missing)}")
    for concept in found["concepts"]:
        if concept.get("layer") not in found["layers"] or len(concept.get("units", [])) != len(
                concept.get("draw_values", [None])):
            raise BadValueError(f"concepts file {path}: concept {concept.get('name')!r} names an unknown layer, "
                                "or its draw values do not match its units")
    return found
