"""How a distilled set is scored: fresh networks trained on it under the method's protocol (`evaluate`), every budget
beside its baselines (`scorecard`), DD-Ranking's label- and augmentation-robust scores (`ddranking`), and the
pictures (`plots`: curves, accuracy against budget, the image grid).

May import: `distiller.methods` (the synthetic set), `distiller.nets`, `distiller.data`, `distiller.core`.
"""
