"""What a replica does beside answering requests: its parts as the routes see them
(:mod:`.base`), its background loops (events, report gauges, rollouts), the desks that act
on operator commands, and the report and timeline of what it serves (:mod:`.reading`)."""
