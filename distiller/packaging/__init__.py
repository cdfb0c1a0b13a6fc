"""The Hugging Face datasets folder and everything around it: the card and its typed `distiller:` contract (`card`,
`contract`, `readme` with `templates/card.md`), building the folder (`package`, `sidecars`), checking it (`validate`,
`folder`, `network`), publishing it and expert buffers (`publish`, `experts_hub`), and retraining from a card alone
(`reproduce`, after `validate`'s check, with `retrain`, which shares no training code with the rest of distiller).

May import: `distiller.scoring`, `distiller.methods`, `distiller.nets`, `distiller.data`, `distiller.core`.
"""
