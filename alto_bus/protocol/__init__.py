"""What travels between processes: the wire format (message kinds, frames, protocol
version) and nested ancestry (paths, END counts, group completion). Pure: no sockets."""
