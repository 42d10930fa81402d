"""Adapters: implementations of the ports. Only `tidings.wiring` chooses among them."""
