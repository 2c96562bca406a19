"""Does a feature extractor preserve input distances? Bounds, ratios, frequency bands, counterexamples."""
