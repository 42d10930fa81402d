"""Services: the use cases. They depend on ports and the pure core, never on adapters."""
