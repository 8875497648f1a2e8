"""DeText: a deep text-ranking network as a GDMix fixed effect.

    text fields -> in-graph normalisation + tokenisation (:mod:`.text`) -> encoder (:mod:`.encoders`)
    query/user vs document embeddings -> interactions; wide sparse bag -> embedding + linear;
    dense columns -> standardise + tanh(w*x + b)            (:mod:`.network`)
    -> MLP -> logit (+ offset) -> pointwise / pairwise / listwise loss (:mod:`.losses`)

Training is a custom loop (:mod:`.training`) whose gradients are summed across workers by a
collective (TF collective ops or Horovod), so one worker and N workers follow the same
trajectory; the best model by a validation metric is exported as a SavedModel with a serving
signature (:mod:`.export`).
"""
