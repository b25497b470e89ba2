"""Training engines, one package per framework. Each is imported only by the command that needs it."""
