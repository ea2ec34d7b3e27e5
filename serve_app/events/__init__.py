"""Events on their way to the store: the buffer that takes them off the request path
(:mod:`.buffer`) and feedback matched to the prediction it answers (:mod:`.feedback`)."""
