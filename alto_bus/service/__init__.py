"""Run a topology as a service: the HTTP front door (a client of the gateway) and its metrics."""
