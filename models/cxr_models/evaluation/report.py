"""The evaluation report: PNG plots (matplotlib, Agg) and ``report.md`` with a table of every metric.

Plots are drawn on ``matplotlib.figure.Figure`` objects attached to an Agg canvas created inside each
function, so nothing touches pyplot's global state or the process-wide backend.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_models.evaluation.metrics import PrecisionRecall, RocCurve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

REPORT_NAME = "report.md"

# Metric key -> (short title, definition). The report table lists these in this order.
METRIC_DEFINITIONS: dict[str, tuple[str, str]] = {
    "view_accuracy": ("View accuracy", "Fraction of images with a view label (frontal / lateral / other) whose predicted view is right."),
    "view_accuracy_frontal": ("View recall: frontal", "Fraction of images labelled frontal that are predicted frontal."),
    "view_accuracy_lateral": ("View recall: lateral", "Fraction of images labelled lateral that are predicted lateral."),
    "view_accuracy_other": ("View recall: other", "Fraction of images labelled other (non-chest) that are predicted other."),
    "analysed_rate": (
        "Analysed rate",
        "Fraction of frontal images (reference view frontal or unknown) the models analysed; the others were "
        "taken for another view or refused (reasons listed below the table).",
    ),
    "lung_dice": (
        "Lung Dice",
        "Mean per-image Dice 2|P∩T|/(|P|+|T|) of the predicted lung mask over frontal images with a non-empty "
        "ground-truth lung mask (a frontal image the model did not analyse counts with an empty prediction).",
    ),
    "lung_iou": ("Lung IoU", "Mean per-image IoU |P∩T|/|P∪T| of the lung mask over the same images."),
    "opacity_map50": (
        "Opacity AP@0.5 (ensemble)",
        "PASCAL VOC all-point AP at IoU > 0.5 of the WBF-fused opacity boxes over frontal images with box "
        "annotations (greedy matching by score, each ground-truth box matched once).",
    ),
    "opacity_map50_detector_a": ("Opacity AP@0.5 (detector A)", "As above, for detector A alone."),
    "opacity_map50_detector_b": ("Opacity AP@0.5 (detector B)", "As above, for detector B alone."),
    "opacity_map50_no_crop": (
        "Opacity AP@0.5 (ensemble, no lung crop)",
        "As above, for the ensemble run on the whole image instead of the lung crop (ablation).",
    ),
    "none_ap": (
        "`none` AP",
        "Challenge image-level class `none`: images without any ground-truth box are positives, ranked by "
        "1 − (highest ensemble opacity score), 1.0 when no box is predicted.",
    ),
    "study_ap_negative": ("Study AP: negative", "VOC AP of the class probability ranking studies (label = class is positive)."),
    "study_ap_typical": ("Study AP: typical", "As above, class typical."),
    "study_ap_indeterminate": ("Study AP: indeterminate", "As above, class indeterminate."),
    "study_ap_atypical": ("Study AP: atypical", "As above, class atypical."),
    "study_map": ("Study mAP", "Mean of the four study-class APs (classes present in the ground truth)."),
    "image_map": ("Image mAP", "Mean of the opacity and `none` APs."),
    "siim_map": (
        "SIIM challenge mAP",
        "Mean of the six class APs of the SIIM-FISABIO-RSNA COVID-19 Detection challenge (4 study classes, "
        "opacity, none), i.e. 2/3 · study mAP + 1/3 · image mAP.",
    ),
    "study_macro_auc": (
        "Study macro AUC",
        "Mean one-vs-rest ROC AUC (Mann–Whitney, ties ½) of the four study classes over labelled studies.",
    ),
    "study_accuracy": ("Study accuracy", "Fraction of labelled studies whose predicted class is right (no frontal image = wrong)."),
    "normal_abnormal_auc": (
        "Normal/abnormal AUC",
        "ROC AUC of p(abnormal) = 1 − P(negative) of the study classifier against the studies' abnormal label "
        "(abnormal when any image is; images without the label ignored); a study without a frontal prediction scores 0.",
    ),
    "reporting_threshold": ("Reporting threshold", "Fused-box score from which an opacity box is reported (manifest, else 0.3, or --reporting-threshold)."),
    "false_boxes_per_negative": (
        "False boxes per negative image",
        "Mean number of fused boxes with score ≥ the reporting threshold on frontal images annotated as having no "
        "opacity (boxes = ()); n = negative images, positives = negatives with at least one such box.",
    ),
    "opacity_recall_at_reporting_threshold": (
        "Opacity recall at the reporting threshold",
        "Fraction of reference boxes matched (IoU > 0.5, greedy by score) by a fused box with score ≥ the reporting threshold.",
    ),
    "opacity_precision_at_reporting_threshold": (
        "Opacity precision at the reporting threshold",
        "Fraction of the fused boxes with score ≥ the reporting threshold (annotated frontal images) that match a reference box.",
    ),
    "opacity_percent_mae": (
        "Opacity % MAE",
        "Mean absolute error, in percentage points, of the predicted opacity % of the lung area over frontal "
        "images with a reference opacity %.",
    ),
    "opacity_percent_auc_any": (
        "Opacity % AUC (any opacity)",
        "ROC AUC of the predicted opacity % as a score for reference opacity % > 0.",
    ),
    "opacity_percent_auc_severe": (
        "Opacity % AUC (severe)",
        "ROC AUC of the predicted opacity % as a score for reference opacity % ≥ 25.",
    ),
    "opacity_percent_spearman": (
        "Opacity % vs severity, Spearman ρ",
        "Spearman rank correlation of the predicted opacity % with the covid-severity geographic extent score (0–8) "
        "over frontal images with a severity score and a predicted opacity %.",
    ),
    "opacity_percent_spearman_p": ("Opacity % vs severity, p-value", "Two-sided p-value of the Spearman ρ above (scipy)."),
    "opacity_percent_spearman_n": ("Opacity % vs severity, pairs", "Number of image pairs behind the Spearman ρ."),
    "opacity_dice": (
        "Opacity Dice (non-empty reference)",
        "Mean per-image Dice of the opacity mask over frontal images whose reference opacity mask is non-empty.",
    ),
    "opacity_empty_agreement": (
        "Opacity empty agreement",
        "Fraction of frontal images with an empty reference opacity mask where the predicted mask is empty too.",
    ),
    "opacity_dice_all": (
        "Opacity Dice (all, empty = 1)",
        "Mean per-image Dice over all images with a reference mask, both-empty counting 1.0; shown for "
        "comparison only, it rewards predicting nothing when most references are empty.",
    ),
    "opacity_dice_pooled": ("Opacity Dice (pooled)", "2·ΣI/(ΣP+ΣT) over all pixels of all images with a reference mask."),
    "crop_fallback_rate": (
        "Lung-crop fallback rate",
        "Fraction of analysed (frontal-predicted) images where the lung crop was implausible and the whole image was used.",
    ),
}

NOT_FOR_CLINICAL_USE = (
    "> **Not for clinical use — synthetic data.** These figures describe demonstration models measured on "
    "synthetic (PhantomCXR) radiographs unless the dataset section names another source; they say nothing "
    "about performance on patients."
)


@dataclass(frozen=True)
class ConfusionData:
    """A confusion matrix (rows = true, columns = predicted) with its class names."""

    classes: tuple[str, ...]
    matrix: np.ndarray


@dataclass(frozen=True)
class ReportCurves:
    """Everything the plots need; each part may be empty when the data had nothing to plot."""

    opacity_pr: Mapping[str, PrecisionRecall] = field(default_factory=dict)
    view_confusion: ConfusionData | None = None
    study_confusion: ConfusionData | None = None
    study_roc: Mapping[str, RocCurve] = field(default_factory=dict)
    severity_roc: Mapping[str, RocCurve] = field(default_factory=dict)
    opacity_percent_truth: np.ndarray | None = None
    opacity_percent_predicted: np.ndarray | None = None
    normal_abnormal_roc: RocCurve | None = None
    severity_truth: np.ndarray | None = None
    severity_predicted: np.ndarray | None = None
    severity_spearman: float | None = None


def _figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    logger.debug("wrote %s", path)
    return path


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def plot_pr_curves(curves: Mapping[str, PrecisionRecall], path: Path, *, title: str) -> Path | None:
    """Precision–recall curves (all-point interpolated envelope drawn as steps) on one plot."""
    drawable = {k: c for k, c in curves.items() if c.recall.size > 0 and c.n_truth > 0}
    if not drawable:
        return None
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot()
    for name, c in drawable.items():
        recall = np.r_[0.0, c.recall]
        envelope = np.maximum.accumulate(c.precision[::-1])[::-1]
        precision = np.r_[envelope[0], envelope]
        ax.step(recall, precision, where="pre", label=f"{name} (AP {_fmt(c.ap)})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(data: ConfusionData, path: Path, *, title: str) -> Path:
    """Confusion matrix heat map with the counts written in the cells."""
    n = len(data.classes)
    fig = _figure(1.2 * n + 2.0, 1.0 * n + 1.6)
    ax = fig.add_subplot()
    image = ax.imshow(data.matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    top = data.matrix.max() if data.matrix.size else 0
    for i in range(n):
        for j in range(n):
            value = int(data.matrix[i, j])
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
    ax.set_xticks(range(n), data.classes, rotation=30, ha="right")
    ax.set_yticks(range(n), data.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def plot_roc_curves(curves: Mapping[str, RocCurve], path: Path, *, title: str) -> Path | None:
    """ROC curves (those with a defined AUC) on one plot, with the chance diagonal."""
    drawable = {k: c for k, c in curves.items() if c.auc is not None}
    if not drawable:
        return None
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot()
    for name, c in drawable.items():
        ax.plot(c.fpr, c.tpr, label=f"{name} (AUC {_fmt(c.auc)})")
    ax.plot([0.0, 1.0], [0.0, 1.0], color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_scatter(truth: np.ndarray, predicted: np.ndarray, path: Path, *, title: str) -> Path | None:
    """Predicted against reference opacity %, with the identity line."""
    if truth.size == 0:
        return None
    fig = _figure(4.8, 4.5)
    ax = fig.add_subplot()
    top = max(float(np.max(truth)), float(np.max(predicted)), 1.0) * 1.05
    ax.plot([0.0, top], [0.0, top], color="grey", linestyle=":", linewidth=1)
    ax.scatter(truth, predicted, s=12, alpha=0.7)
    ax.set_xlim(0.0, top)
    ax.set_ylim(0.0, top)
    ax.set_xlabel("reference opacity % of lung area")
    ax.set_ylabel("predicted opacity % of lung area")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_severity_scatter(
    severity: np.ndarray, predicted: np.ndarray, path: Path, *, rho: float | None, title: str
) -> Path | None:
    """Predicted opacity % against the covid-severity geographic extent score (0–8), with Spearman ρ."""
    if severity.size == 0:
        return None
    fig = _figure(4.8, 4.5)
    ax = fig.add_subplot()
    ax.scatter(severity, predicted, s=14, alpha=0.7)
    ax.set_xlim(-0.3, 8.3)
    ax.set_ylim(0.0, max(float(np.max(predicted)), 1.0) * 1.05)
    ax.set_xlabel("severity: geographic extent score (0–8)")
    ax.set_ylabel("predicted opacity % of lung area")
    ax.set_title(f"{title} (Spearman ρ {_fmt(rho)}, n {severity.size})")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def write_plots(out_dir: Path, curves: ReportCurves) -> dict[str, Path]:
    """Draw every plot the curves allow into ``out_dir``; returns title -> PNG path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path | None] = {
        "Opacity precision–recall (AP@0.5)": plot_pr_curves(
            curves.opacity_pr, out_dir / "opacity_pr.png", title="Opacity detection, IoU > 0.5"
        ),
        "View confusion matrix": None
        if curves.view_confusion is None
        else plot_confusion(curves.view_confusion, out_dir / "confusion_view.png", title="View"),
        "Study confusion matrix": None
        if curves.study_confusion is None
        else plot_confusion(curves.study_confusion, out_dir / "confusion_study.png", title="Study class"),
        "Study classes, one-vs-rest ROC": plot_roc_curves(
            curves.study_roc, out_dir / "roc_study.png", title="Study class (one-vs-rest)"
        ),
        "Opacity % as a severity score, ROC": plot_roc_curves(
            curves.severity_roc, out_dir / "roc_opacity_percent.png", title="Opacity % vs reference severity"
        ),
        "Predicted vs reference opacity %": None
        if curves.opacity_percent_truth is None or curves.opacity_percent_predicted is None
        else plot_scatter(
            curves.opacity_percent_truth,
            curves.opacity_percent_predicted,
            out_dir / "opacity_percent_scatter.png",
            title="Opacity % of lung area",
        ),
        "Normal vs abnormal studies, ROC": None
        if curves.normal_abnormal_roc is None
        else plot_roc_curves(
            {"1 − P(negative)": curves.normal_abnormal_roc}, out_dir / "roc_normal_abnormal.png",
            title="Abnormal study (any image abnormal)",
        ),
        "Predicted opacity % vs severity score": None
        if curves.severity_truth is None or curves.severity_predicted is None
        else plot_severity_scatter(
            curves.severity_truth,
            curves.severity_predicted,
            out_dir / "opacity_percent_severity.png",
            rho=curves.severity_spearman,
            title="Opacity % vs severity",
        ),
    }
    return {title: path for title, path in plots.items() if path is not None}


def _value_cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _metrics_table(metrics: Mapping[str, Any]) -> list[str]:
    counts = metrics.get("n", {}) if isinstance(metrics.get("n"), Mapping) else {}
    positives = metrics.get("n_positive", {}) if isinstance(metrics.get("n_positive"), Mapping) else {}

    def count(table: Mapping[str, Any], key: str) -> str:
        value = table.get(key)
        return _value_cell(value) if value is not None else ""

    lines = ["| metric | value | 95 % CI | n | positives | definition |", "|---|---|---|---|---|---|"]
    for key, (title, definition) in METRIC_DEFINITIONS.items():
        if key in metrics:
            lines.append(
                f"| {_cell(title)} (`{key}`) | {_value_cell(metrics[key])} | {interval_text(metrics, key)} | "
                f"{count(counts, key)} | {count(positives, key)} | {_cell(definition)} |"
            )
    others = [
        k
        for k, v in metrics.items()
        if k not in METRIC_DEFINITIONS and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))
    ]
    for key in sorted(others):
        lines.append(
            f"| `{key}` | {_value_cell(metrics[key])} | {interval_text(metrics, key)} | {count(counts, key)} | "
            f"{count(positives, key)} | |"
        )
    return lines


def interval_text(metrics: Mapping[str, Any], key: str) -> str:
    """``low to high`` of the metric's bootstrap interval (``metrics["ci"][key]``), empty without one."""
    intervals = metrics.get("ci")
    interval = intervals.get(key) if isinstance(intervals, Mapping) else None
    if not isinstance(interval, (list, tuple)) or len(interval) != 2:
        return ""
    return f"{interval[0]:.3f} to {interval[1]:.3f}"


# Paired differences in metrics["ci"] (not metrics of their own): key -> what it compares.
PAIRED_DIFFERENCES: dict[str, str] = {
    "opacity_map50_minus_detector_a": "ensemble AP@0.5 − detector A AP@0.5",
    "opacity_map50_minus_detector_b": "ensemble AP@0.5 − detector B AP@0.5",
    "opacity_map50_minus_no_crop": "ensemble AP@0.5 with the lung crop − without it",
}


def comparison_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(title, value, baseline, difference, 95 % CI) per metric of ``metrics["comparison"]``."""
    comparison = metrics.get("comparison")
    entries = comparison.get("metrics") if isinstance(comparison, Mapping) else None
    if not isinstance(entries, Mapping):
        return []
    rows = []
    for key, entry in entries.items():
        interval = entry.get("ci")
        rows.append((
            METRIC_DEFINITIONS.get(key, (key, ""))[0],
            _value_cell(entry.get("value")),
            _value_cell(entry.get("baseline")),
            f"{entry['difference']:+.4f}",
            "" if not interval else f"{interval[0]:+.3f} to {interval[1]:+.3f}",
        ))
    return rows


def _comparison_lines(metrics: Mapping[str, Any]) -> list[str]:
    rows = comparison_rows(metrics)
    if not rows:
        return []
    comparison = metrics["comparison"]
    baseline = comparison.get("baseline_weights") or "the baseline analyser"
    lines = [
        "## Against the baseline weights",
        "",
        f"Baseline: `{_cell(str(baseline))}` (version {_value_cell(comparison.get('baseline_version'))}, reporting "
        f"threshold {_value_cell(comparison.get('baseline_reporting_threshold'))}), run on the same studies. The "
        "interval is a paired bootstrap of the difference (the same resampled units for both weights): one that "
        "spans 0 means this data cannot tell the two apart.",
        "",
        "| metric | these weights | baseline | difference | 95 % CI of the difference |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {_cell(title)} | {value} | {base} | {diff} | {ci} |" for title, value, base, diff, ci in rows]
    return lines + [""]


def _differences_lines(metrics: Mapping[str, Any]) -> list[str]:
    intervals = metrics.get("ci")
    if not isinstance(intervals, Mapping) or not any(k in intervals for k in PAIRED_DIFFERENCES):
        return []
    lines = [
        "### Paired differences",
        "",
        "The same bootstrap resamples of the annotated images for both sides; an interval above 0 means the "
        "first is better on resamples of this data, one that spans 0 means this data cannot tell them apart.",
        "",
        "| difference | 95 % CI |",
        "|---|---|",
    ]
    lines += [f"| {_cell(title)} | {interval_text(metrics, key)} |" for key, title in PAIRED_DIFFERENCES.items()
              if key in intervals]
    return lines + [""]


def _source_table(metrics: Mapping[str, Any]) -> list[str]:
    """One row per data source: what it brought to the evaluation."""
    by_source = metrics.get("counts_by_source")
    if not isinstance(by_source, Mapping) or not by_source:
        return []
    columns: list[str] = []
    for row in by_source.values():
        columns += [c for c in row if c not in columns]
    lines = ["| source | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, row in by_source.items():
        lines.append(f"| {_cell(str(name))} | " + " | ".join(_value_cell(row.get(c, 0)) for c in columns) + " |")
    return lines


def data_header(metrics: Mapping[str, Any]) -> str:
    """One line naming the data sources and the split that were evaluated."""
    data = metrics.get("data") if isinstance(metrics.get("data"), Mapping) else {}
    sources = data.get("sources")
    if isinstance(sources, (list, tuple)) and sources:
        names = [str(s.get("spec", s.get("name", "?"))) if isinstance(s, Mapping) else str(s) for s in sources]
    elif data.get("root") is not None:
        names = [str(data["root"])]
    else:
        names = ["unknown"]
    split = data.get("split", "all")
    if split in ("train", "val"):
        part = "validation" if split == "val" else "training"
        split_text = (
            f"the {part} part (`--split {split}`: patient-hash split, validation fraction "
            f"{data.get('val_fraction')}, split seed {data.get('split_seed')})"
        )
    else:
        split_text = "all records (`--split all`)"
    limit = data.get("limit")
    limit_text = "" if limit is None else f", at most {limit} images"
    return "**Data:** " + ", ".join(f"`{n}`" for n in names) + f" — {split_text}{limit_text}."


def _mapping_lines(mapping: Mapping[str, Any], *, indent: str = "") -> list[str]:
    lines: list[str] = []
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            lines.append(f"{indent}- {key}:")
            lines.extend(_mapping_lines(value, indent=indent + "  "))
        else:
            lines.append(f"{indent}- {key}: {_value_cell(value)}")
    return lines


def _models_lines(metrics: Mapping[str, Any], manifest: Mapping[str, Any] | None) -> list[str]:
    version = metrics.get("model_version") or (manifest or {}).get("version")
    lines = [f"Weights version: **{_value_cell(version)}**", ""]
    models = (manifest or {}).get("models")
    if isinstance(models, Mapping) and models:
        lines += ["| model | details |", "|---|---|"]
        for name, info in models.items():
            if isinstance(info, Mapping):
                details = ", ".join(
                    f"{k}={_value_cell(v)}" for k, v in info.items() if not isinstance(v, (Mapping, list, tuple))
                )
            else:
                details = _value_cell(info)
            lines.append(f"| {_cell(str(name))} | {_cell(details)} |")
    return lines


def write_report(
    out_dir: Path,
    metrics: Mapping[str, Any],
    curves: ReportCurves,
    *,
    manifest: Mapping[str, Any] | None = None,
) -> Path:
    """Write the PNG plots and ``report.md`` into ``out_dir``; returns the report's path.

    ``metrics`` is the dictionary written to ``metrics.json``: scalar metrics at the top level, the
    per-metric sample counts under ``"n"``, dataset counts under ``"counts"``, the data source under
    ``"data"`` and the weights version under ``"model_version"``. ``manifest`` (the weights manifest)
    adds a table of the models.
    """
    out_dir = Path(out_dir)
    plots = write_plots(out_dir, curves)
    lines = ["# cxr evaluation report", "", data_header(metrics), "", NOT_FOR_CLINICAL_USE, ""]

    lines += ["## Dataset", ""]
    data = metrics.get("data")
    if isinstance(data, Mapping):
        lines += _mapping_lines({k: v for k, v in data.items() if k != "sources"})
    counts = metrics.get("counts")
    if isinstance(counts, Mapping):
        lines += _mapping_lines(counts)
    lines.append("")
    source_table = _source_table(metrics)
    if source_table:
        lines += ["### Per data source", ""] + source_table + [""]

    lines += ["## Models", ""] + _models_lines(metrics, manifest) + [""]

    lines += ["## Metrics", ""] + _metrics_table(metrics) + [""]
    lines.append(
        "`n/a`: undefined on this data (e.g. no positive or no annotated image). `n`: images (studies for "
        "study metrics) that carry the metric's label; `positives`: the positives among them (reference boxes "
        "for the detection APs). 95 % CI: "
        + _cell(str(metrics.get("ci_method", "not computed")))
        + "."
    )
    lines.append("")
    lines += _differences_lines(metrics)
    lines += _comparison_lines(metrics)
    reasons = metrics.get("not_analysed_reasons")
    if isinstance(reasons, Mapping) and reasons:
        lines += ["### Frontal images not analysed", ""]
        lines += [f"- {_cell(str(reason))}: {_value_cell(count)}" for reason, count in reasons.items()]
        lines.append("")

    lines += ["## Plots", ""]
    if plots:
        for title, path in plots.items():
            lines += [f"### {title}", "", f"![{title}]({path.relative_to(out_dir).as_posix()})", ""]
    else:
        lines += ["No plot: the data had nothing to draw.", ""]

    report = out_dir / REPORT_NAME
    report.write_text("\n".join(lines), encoding="utf-8")
    logger.info("wrote %s with %d plots", report, len(plots))
    return report


def summary_rows(metrics: Mapping[str, Any], keys: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(title, formatted value) pairs of the defined metrics, for a console summary."""
    chosen = list(METRIC_DEFINITIONS) if keys is None else list(keys)
    rows = []
    for k in chosen:
        if k in metrics:
            interval = interval_text(metrics, k)
            value = _value_cell(metrics[k])
            rows.append((METRIC_DEFINITIONS.get(k, (k, ""))[0], f"{value}  (95 % CI {interval})" if interval else value))
    return rows
