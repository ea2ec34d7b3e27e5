"""What a deploy configures and the errors serving raises: the ingress ``user_config``
(:mod:`.ingress`), its rollout section (:mod:`.rollout`), names, and serving's errors.

Pure pydantic, the bottom of the serving side: every other sub-package may import it.
"""
