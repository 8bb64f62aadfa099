"""Why an image is not analysed: the exact reason texts of the pipeline (result.json and the SR).

An image is analysed as a chest only when the view model says frontal, it is not out of
distribution (:mod:`cxr_models.inference.ood`) and a plausible lung mask is found
(:func:`cxr_models.inference.crop.implausibility_reason`). Torch-free, so the service's result
types can share the texts.
"""

from __future__ import annotations

REASON_LATERAL = "lateral view"
REASON_NOT_CHEST = "not a chest radiograph"
NO_LUNG_FIELDS_PREFIX = "no plausible lung fields"
OUT_OF_DISTRIBUTION_PREFIX = "image unlike the training data"

VIEW_REASONS: dict[str, str] = {"lateral": REASON_LATERAL, "other": REASON_NOT_CHEST}


def view_reason(view: str) -> str | None:
    """The reason a view is not analysed, or None for ``frontal``."""
    if view == "frontal":
        return None
    return VIEW_REASONS.get(view, f"view {view}")


def no_lung_fields(detail: str) -> str:
    """``no plausible lung fields: <detail>`` (``detail`` from ``implausibility_reason``)."""
    return f"{NO_LUNG_FIELDS_PREFIX}: {detail}"


def out_of_distribution(score: float, limit: float) -> str:
    """``image unlike the training data (score S, limit T)``, both with two decimals."""
    return f"{OUT_OF_DISTRIBUTION_PREFIX} (score {score:.2f}, limit {limit:.2f})"
