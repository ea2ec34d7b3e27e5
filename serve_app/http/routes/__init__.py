"""HTTP routes, grouped by what they serve; each group only translates HTTP to the
replica's parts (predictor, event store, serving state) and back."""
