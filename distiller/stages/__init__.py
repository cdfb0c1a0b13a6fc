"""The pipeline's stages, one module each: read the inputs, call the library, write the outputs atomically.

download -> expert-buffer -> distill -> evaluate -> package. Each module has `run(p, layout, progress)` and
`summary(result)`; `distiller <stage>` calls them and `dvc.yaml` lists, for each stage, its module and every module
of `distiller/` it imports (tests/test_dvc_deps.py checks it), so an edit re-runs exactly the stages it can change.
"""
