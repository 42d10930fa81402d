"""The pure core: protocol sessions, channel rules, tokens and wire encodings.

Nothing here performs I/O or imports an event loop. Callers pass in bytes, the time and the
results of the I/O they did; the core returns bytes to send and typed requests to fulfil, in
the manner of python-websockets' sans-I/O ``Protocol``.
"""
