"""Source datasets and the prepared tensor file: `sources` reads each source's original files, `prepare` splits,
resizes and fits the preprocessing (normalisation or ZCA), `prepared` is the file every later stage reads, and
`catalog` says on a card where a source comes from.

May import: `distiller.core`.
"""
