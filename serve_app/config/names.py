"""What a variant may be called: one pattern for the config and the rollout block, since
the name becomes a response header, a metric label and a key in the event store."""

VARIANT_NAME = r"^[a-z0-9][a-z0-9_-]*$"
