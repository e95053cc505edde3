"""Parity report: do the exports compute what the Keras model computes?

``parity_report`` runs the same raw examples through

* ``keras`` — the reference: the data pipeline's per-example transforms, then the Keras
  model and the task's output layer (what training/evaluation computes);
* ``saved_model`` — the exported ``serving_default`` signature (pre-processing inside);
* ``tflite_<quantize>`` — each TFLite variant in the LiteRT interpreter,

and compares every variant's named outputs with the reference:

* ``max_abs_diff`` — over float outputs (probabilities, values, embeddings; detection boxes
  and scores over matched detection pairs, all scores);
* ``agreement`` — class agreement: fraction of equal ``class_ids`` (classification:
  per example; segmentation: per pixel), or the box-match rate for detection (2·matches /
  (reference boxes + variant boxes), a match = same label and IoU >= 0.5, boxes with
  score >= the task's score threshold); multi-task models report their worst task;
* ``decisive_agreement`` — the same over items whose reference top-1 / top-2 probability
  margin is >= 0.05: near-ties flip under quantization (an int8 softmax has steps of
  1/256), decisive predictions should not;
* ``miou`` — segmentation: mean IoU of the variant's class map against the reference's
  (classes present in either; the worst task);
* file size and median latency per example (batch 1).

Targets (checked in the ``ok`` column, not asserted): SavedModel max diff <= 1e-5, TFLite
fp32 <= 1e-4, float16 agreement >= 99 %, dynamic/int8/int8-mixed agreement >= 97 %, int8
and int8-mixed files <= 0.3 x the fp32 file.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

TARGETS = {
    "saved_model": {"max_abs_diff": 1e-5},
    "tflite_none": {"max_abs_diff": 1e-4},
    "tflite_float16": {"agreement": 0.99},
    "tflite_dynamic": {"agreement": 0.97},
    "tflite_int8": {"agreement": 0.97, "size_ratio": 0.3},
    "tflite_int8-mixed": {"agreement": 0.97, "size_ratio": 0.3},
}


@dataclasses.dataclass
class VariantResult:
    """One row of the report."""

    name: str
    size_bytes: int | None = None
    latency_ms: float | None = None
    max_abs_diff: float | None = None
    agreement: float | None = None
    decisive_agreement: float | None = None
    miou: float | None = None
    size_ratio: float | None = None
    per_output_diff: dict[str, float] = dataclasses.field(default_factory=dict)
    ok: bool | None = None
    failures: list[str] = dataclasses.field(default_factory=list)

    def check_targets(self) -> None:
        target = TARGETS.get(self.name)
        if not target:
            return
        self.failures = []
        if "max_abs_diff" in target and self.max_abs_diff is not None and self.max_abs_diff > target["max_abs_diff"]:
            self.failures.append(f"max_abs_diff {self.max_abs_diff:.3g} > {target['max_abs_diff']:g}")
        if "agreement" in target and self.agreement is not None and self.agreement < target["agreement"]:
            self.failures.append(f"agreement {self.agreement:.4f} < {target['agreement']:g}")
        if "size_ratio" in target and self.size_ratio is not None and self.size_ratio > target["size_ratio"]:
            self.failures.append(f"size ratio {self.size_ratio:.3f} > {target['size_ratio']:g}")
        self.ok = not self.failures


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes ``[N, 4]`` and ``[M, 4]`` (x1, y1, x2, y2)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def detections(out: dict[str, np.ndarray], names: dict[str, str], threshold: float, with_scores: bool = False) -> tuple[np.ndarray, ...]:
    """(boxes ``[n, 4]``, labels ``[n]``[, scores ``[n]``]) of the first example with
    score >= threshold."""
    n = int(np.asarray(out[names["num_detections"]]).reshape(-1)[0])
    boxes = np.asarray(out[names["boxes"]])[0, :n]
    scores = np.asarray(out[names["scores"]])[0, :n]
    labels = np.asarray(out[names["labels"]])[0, :n]
    keep = scores >= threshold
    if with_scores:
        return boxes[keep], labels[keep], scores[keep]
    return boxes[keep], labels[keep]


def matched_pairs(ref: tuple[np.ndarray, ...], other: tuple[np.ndarray, ...], iou: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one matches (same label, IoU >= ``iou``), highest IoU first."""
    ious = box_iou(ref[0], other[0])
    ious = np.where(ref[1][:, None] == other[1][None, :], ious, 0.0)
    pairs = []
    while ious.size and ious.max() >= iou:
        i, j = np.unravel_index(np.argmax(ious), ious.shape)
        pairs.append((int(i), int(j)))
        ious[i, :] = 0
        ious[:, j] = 0
    return pairs


def box_matches(ref: tuple[np.ndarray, ...], other: tuple[np.ndarray, ...], iou: float = 0.5) -> int:
    """Number of ``matched_pairs``."""
    return len(matched_pairs(ref, other, iou))


DECISIVE_MARGIN = 0.05


def top2_margin(probabilities: np.ndarray) -> np.ndarray | None:
    """Top-1 minus top-2 probability over the last axis (None with one channel)."""
    p = np.asarray(probabilities, np.float64)
    if p.shape[-1] < 2:
        return None
    top = np.sort(p, axis=-1)
    return top[..., -1] - top[..., -2]


class Comparison:
    """Accumulates agreement statistics of one variant against the reference, per task
    (multi-task models report the worst task)."""

    def __init__(self, description: dict[str, Any]):
        from rskeras.export.description import merge_of, single_tasks

        self.tasks = single_tasks(description["task"])
        self.merges = {name: merge_of(task) for name, task in self.tasks.items()}
        self.diffs: dict[str, float] = {}
        # task -> [agreeing, total, agreeing decisive, total decisive]
        self.counts: dict[str, list[int]] = {}
        self.confusion: dict[str, np.ndarray] = {}

    def _count(self, task: str, equal: np.ndarray, margin: np.ndarray | None) -> None:
        c = self.counts.setdefault(task, [0, 0, 0, 0])
        c[0] += int(np.sum(equal))
        c[1] += int(equal.size)
        decisive = np.ones_like(equal, bool) if margin is None else margin.reshape(equal.shape) >= DECISIVE_MARGIN
        c[2] += int(np.sum(equal & decisive))
        c[3] += int(np.sum(decisive))

    def _diff(self, name: str, r: np.ndarray, o: np.ndarray) -> None:
        d = float(np.max(np.abs(r.astype(np.float64) - o.astype(np.float64)))) if r.size else 0.0
        self.diffs[name] = max(self.diffs.get(name, 0.0), d)

    def add(self, ref: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> None:
        # Detection slots are compared as matched pairs (a reordering is not an error).
        detection_outputs = {n for name, t in self.tasks.items() if self.merges[name] == "boxes" for n in t["outputs"].values()}
        for name, r in ref.items():
            if name not in out:
                raise KeyError(f"output {name!r} missing from the variant (has {sorted(out)})")
            if name in detection_outputs:
                continue
            r = np.asarray(r)
            o = np.asarray(out[name]).reshape(r.shape)
            if np.issubdtype(r.dtype, np.floating):
                self._diff(name, r, o)
        for task_name, task in self.tasks.items():
            names = task["outputs"]
            merge = self.merges[task_name]
            if merge != "boxes" and "class_ids" in names and "probabilities" in names:
                r = np.asarray(ref[names["class_ids"]]).astype(np.int64)
                o = np.asarray(out[names["class_ids"]]).reshape(r.shape).astype(np.int64)
                self._count(task_name, r == o, top2_margin(ref[names["probabilities"]]))
                if merge == "raster":  # a class map: confusion matrix for the mIoU
                    n = int(task["num_classes"])
                    cm = np.bincount((r * n + o).reshape(-1), minlength=n * n).reshape(n, n)
                    self.confusion[task_name] = self.confusion.get(task_name, 0) + cm
            elif merge == "boxes":
                every_a = detections(ref, names, 0.0, with_scores=True)
                every_b = detections(out, names, 0.0, with_scores=True)
                pairs = matched_pairs(every_a, every_b)
                if pairs:
                    i, j = np.asarray(pairs).T
                    self._diff(names["boxes"], every_a[0][i], every_b[0][j])
                    self._diff(names["scores"], every_a[2][i], every_b[2][j])
                thr = float(task.get("score_threshold") or 0.5)
                a = detections(ref, names, thr)
                b = detections(out, names, thr)
                c = self.counts.setdefault(task_name, [0, 0, 0, 0])
                matched, total = 2 * box_matches(a, b), len(a[0]) + len(b[0])
                c[0] += matched
                c[1] += total
                c[2] += matched
                c[3] += total

    def agreement(self, decisive: bool = False) -> float | None:
        """Class agreement / box-match rate of the worst task (None without class or
        detection outputs); ``decisive``: only items whose reference top-2 probability
        margin is >= DECISIVE_MARGIN."""
        if not self.counts:
            return None
        i = 2 if decisive else 0
        return min(1.0 if c[i + 1] == 0 else c[i] / c[i + 1] for c in self.counts.values())

    def miou(self) -> float | None:
        if not self.confusion:
            return None
        values = []
        for cm in self.confusion.values():
            inter = np.diag(cm).astype(np.float64)
            union = cm.sum(0) + cm.sum(1) - inter
            present = union > 0
            values.append(float(np.mean(inter[present] / union[present])) if present.any() else 1.0)
        return float(min(values))


def run_variant(
    name: str,
    fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    inputs: list[dict[str, np.ndarray]],
    references: list[dict[str, np.ndarray]],
    description: dict[str, Any],
    size_bytes: int | None = None,
) -> VariantResult:
    """Runs ``fn`` on every input (a signature batch of 1) and compares with references."""
    comparison = Comparison(description)
    times = []
    for x, ref in zip(inputs, references):
        start = time.perf_counter()
        out = fn(x)
        times.append(time.perf_counter() - start)
        comparison.add(ref, out)
    result = VariantResult(name, size_bytes=size_bytes)
    result.latency_ms = 1000 * float(np.median(times)) if times else None
    result.per_output_diff = dict(comparison.diffs)
    result.max_abs_diff = max(comparison.diffs.values()) if comparison.diffs else None
    result.agreement = comparison.agreement()
    result.decisive_agreement = comparison.agreement(decisive=True)
    result.miou = comparison.miou()
    return result


def format_table(results: list[VariantResult], num_examples: int, title: str = "") -> str:
    """A fixed-width text table of the results."""
    header = ["variant", "size", "ms/example", "max abs diff", "agreement", f"agree|m>={DECISIVE_MARGIN:g}", "mIoU", "ok"]
    rows = []
    for r in results:
        size = "" if r.size_bytes is None else f"{r.size_bytes / 1024:.0f} KiB" + (f" ({r.size_ratio:.2f}x)" if r.size_ratio is not None else "")
        rows.append(
            [
                r.name,
                size,
                "" if r.latency_ms is None else f"{r.latency_ms:.2f}",
                "" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}",
                "" if r.agreement is None else f"{100 * r.agreement:.2f}%",
                "" if r.decisive_agreement is None else f"{100 * r.decisive_agreement:.2f}%",
                "" if r.miou is None else f"{r.miou:.4f}",
                "" if r.ok is None else ("yes" if r.ok else "NO: " + "; ".join(r.failures)),
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = []
    if title:
        lines.append(title)
    lines.append(f"parity on {num_examples} examples (reference: Keras model on the data pipeline's inputs)")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def finalize(results: list[VariantResult]) -> list[VariantResult]:
    """Fills size ratios (against tflite_none) and target checks."""
    fp32 = next((r.size_bytes for r in results if r.name == "tflite_none" and r.size_bytes), None)
    for r in results:
        if fp32 and r.name.startswith("tflite_") and r.size_bytes:
            r.size_ratio = r.size_bytes / fp32
        r.check_targets()
    return results


def parity_report(
    exportable: Any,
    examples: list[dict[str, np.ndarray]],
    saved_model_path: str | None = None,
    tflite_models: dict[str, bytes] | None = None,
) -> list[VariantResult]:
    """Runs ``examples`` (raw ``[T, H, W, C]`` arrays, all of one size) through the Keras
    reference, the SavedModel at ``saved_model_path`` and each TFLite flatbuffer
    (``{quantize: bytes}``); returns the report rows (targets checked)."""
    import os

    import tensorflow as tf

    from rskeras.export.examples import signature_batch
    from rskeras.export.litert import LiteRTModel

    description = exportable.description()
    inputs = [signature_batch(e, exportable.raw_inputs) for e in examples]
    references = [exportable.pipeline_outputs(e) for e in examples]
    first = next(iter(examples[0].values()))
    h, w = int(first.shape[-3]), int(first.shape[-2])
    keras_model = exportable.keras_model(h, w)
    compiled = tf.function(lambda x: keras_model(x, training=False))

    def keras_fn(x):
        return {k: v.numpy() for k, v in compiled({k: tf.constant(v) for k, v in x.items()}).items()}

    keras_fn(inputs[0])  # trace once before timing
    results = [run_variant("keras", keras_fn, inputs, references, description)]
    if saved_model_path:
        loaded = tf.saved_model.load(saved_model_path)
        signature = loaded.signatures["serving_default"]

        def saved_fn(x):
            return {k: v.numpy() for k, v in signature(**{k: tf.constant(v) for k, v in x.items()}).items()}

        saved_fn(inputs[0])
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(saved_model_path) for f in files)
        results.append(run_variant("saved_model", saved_fn, inputs, references, description, size))
    for quantize, content in (tflite_models or {}).items():
        model = LiteRTModel(content=content)
        results.append(run_variant(f"tflite_{quantize}", lambda x, m=model: m(**x), inputs, references, description, len(content)))
    return finalize(results)
