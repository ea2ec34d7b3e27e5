"""The serving side: the Ray Serve ingress, routing, request schemas and model loading."""
