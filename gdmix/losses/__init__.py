"""Losses, apart from the solvers that minimise them and the models that use them.

:mod:`gdmix.losses.logistic`: the binary logistic loss in numpy, exact where naive forms cancel
(the random-effect solvers); :mod:`gdmix.losses.logistic_tf`: the same loss over rows held in
TensorFlow tensors (the fixed effect).
"""
