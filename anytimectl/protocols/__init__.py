"""Training protocols: what one step does between ranks, one module per protocol, named for it."""
