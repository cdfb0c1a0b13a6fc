"""The `distiller` command line (Typer): `app` holds the stage commands and the top-level options, `recipe` and
`reproduce` their command groups. Each command parses options, calls one library function and prints its summary.

May import: every layer below (`distiller.stages` and the library).
"""
