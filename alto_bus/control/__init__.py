"""The control plane, in the broker process: membership and epochs, the request book of
the gateway (admission, deadlines, results), pool scheduling rounds, and the broker that
owns their sockets."""
