"""Retraining on production's labelled events: the rows, the incumbents, the gate."""
