"""Sockets: the one socket factory (bind/connect, high-water marks, linger, CURVE) and
CURVE key files with the guard that checks peers' keys."""
