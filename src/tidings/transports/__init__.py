"""Transports: thin I/O shells over the gateway's transport-agnostic client sessions."""
