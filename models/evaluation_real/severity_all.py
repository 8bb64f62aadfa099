"""Spearman rho of the shipped pipeline's opacity % against every covid severity score (0.2.0-demo: rho 0.43, n 51).

    .venv/bin/python models/evaluation_real/severity_all.py [../shared/realcxr]
"""

import sys

from scipy.stats import spearmanr

from cxr_models.datasets import load_image
from cxr_models.datasets.sources import as_sources, read_sources
from cxr_models.inference.pipeline import Analyzer

root = sys.argv[1] if len(sys.argv) > 1 else "../shared/realcxr"
records = [r for r in read_sources(as_sources([f"{root}/covid-chestxray-dataset,format=covidcxr"])) if r.severity is not None]
analyzer = Analyzer.load(device="cpu")
pairs = []
for record in records:
    prediction = analyzer.analyze_study([load_image(record)]).images[0]
    if prediction.opacity_percent is not None:
        pairs.append((record.severity, prediction.opacity_percent))
rho, p = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
print(f"images with a severity score: {len(records)}, analysed: {len(pairs)}, Spearman rho {rho:.3f} (p {p:.2g})")
