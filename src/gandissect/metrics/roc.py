"""ROC AUC of a score that should be larger on positives: the probability that a random positive outscores a
random negative (ties count half), the Mann-Whitney U statistic over the product of the counts."""

from __future__ import annotations

import numpy as np
from scipy.stats import mannwhitneyu


def roc_auc(negatives, positives) -> float:
    negatives, positives = np.asarray(negatives, dtype=np.float64), np.asarray(positives, dtype=np.float64)
    if len(negatives) == 0 or len(positives) == 0:
        raise ValueError("ROC AUC needs at least one negative and one positive score")
    return float(mannwhitneyu(positives, negatives).statistic / (len(negatives) * len(positives)))
