"""The training commands, one module per method; each resolves its options and hands a RunRequest to the shell.

Importing these modules stays cheap (no framework, no MPI): `anytimectl --help` imports them all.
"""
