"""Attribution methods (Captum) and their summaries; :mod:`multimodal.explain` runs them over a cohort."""

from multimodal.attribution.methods import GROUP_METHODS, METHODS, MethodSettings, attribute_batch, attribute_groups
from multimodal.attribution.summaries import feature_direction, planted_features, precision_at_k, rank_stability

__all__ = [
    "GROUP_METHODS",
    "METHODS",
    "MethodSettings",
    "attribute_batch",
    "attribute_groups",
    "feature_direction",
    "planted_features",
    "precision_at_k",
    "rank_stability",
]
