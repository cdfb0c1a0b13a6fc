"""The plumbing every layer stands on, with no network or method code: errors, atomic files and sealed tensor files,
checkpoints, the YAML reader and the typed params (the frozen dataclasses `params.yaml` mirrors, the DSA family names
they accept, the recipes that overlay them), seeds and devices, artifact paths, the project lock, provenance stamps,
and the torchrun plumbing (`launch` starts a job, `distributed` is what its ranks share).

May import: the standard library, torch and the third-party libraries; nothing else of distiller.
"""
