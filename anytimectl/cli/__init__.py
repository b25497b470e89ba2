"""The command line: `app` (the Typer app and `main`, the console script's entry point), `options` (every option
declared once, in groups), `ranges` (the count and size syntax of the studies' flags) and `commands/` (one module
per command). Importing this package imports nothing else, so that `anytimectl.cli.options` can be imported by the
modules that declare their own option groups without loading the app.
"""
