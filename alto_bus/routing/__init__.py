"""Where an item goes next: the key table of a keyed stage (aggregation keys -> instances,
per epoch), the power-of-two choice of a stateless stage, and the pool route of a stage
served by an LM pool. Pure: no sockets."""
