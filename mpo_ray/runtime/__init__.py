"""The runtime: the only layer that touches Ray (session, resources, actors and worker groups)."""
