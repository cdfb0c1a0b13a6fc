"""The distillation methods and what they share: MTT (`mtt`) with its expert trajectories (`experts` trains them,
`buffer` stores them), RaT-BPTT (`ratbptt`) and Boost-DD's nested budgets (`boost`), the synthetic set and its file
(`synthetic`), and the run context every method's driver gets (`run`: generators, curves, guards, checkpoints).

May import: `distiller.nets`, `distiller.data`, `distiller.core`.
"""
