"""Networks and how they are trained: the ConvNet and the zoo (`models`), DSA augmentation (`augment`), plain SGD
training on a tensor dataset (`train`), K networks as one vmapped forward (`batched`), and the differentiable inner
optimisers the methods unroll (`optim`).

May import: `distiller.core` (no data files: networks see tensors only).
"""
