"""Does a feature extractor preserve input distances? Upper bounds, distance ratios, frequency bands and the
counterexample search (the convolutional-ResNet frequency analysis)."""

from credo.lipschitz.bounds import BoundReport, feature_map, upper_bound
from credo.lipschitz.frequency import FrequencySplit
from credo.lipschitz.probe import ProbeResult, feature_extractor, probe
from credo.lipschitz.ratios import distance_ratios, jacobian_singular_values
from credo.lipschitz.search import SearchResult, search_counterexamples

__all__ = [
    "BoundReport",
    "FrequencySplit",
    "ProbeResult",
    "SearchResult",
    "distance_ratios",
    "feature_extractor",
    "feature_map",
    "jacobian_singular_values",
    "probe",
    "search_counterexamples",
    "upper_bound",
]
