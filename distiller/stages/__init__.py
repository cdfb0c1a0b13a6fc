"""The pipeline's stages, one module each: read the inputs, call the library, write the outputs atomically.

check (params.yaml whole), then download -> expert-buffer -> distill -> evaluate -> package. Each module has
`run(p, layout, progress)` and `summary(result)`, which turns what `run` returned into the line the CLI prints;
`distiller <stage>` calls them.
`dvc.yaml` lists, for each stage, its module and every module of `distiller/` that module imports
(tests/test_dvc_deps.py checks it), so an edit re-runs exactly the stages it can change.

May import: the library (`distiller.packaging` and every layer below it); never `distiller.cli`.
"""
