"""The pipeline's stages as library calls on URIs.

Each function here is one step of the Kubeflow pipeline (``components/<stage>/`` wraps it in a
few typed lines) and knows nothing of Kubeflow: it reads and writes URIs (local paths or
object stores, through fsspec) and takes the run's configuration as YAML text plus
``--set``-style overrides, the way the pipeline's runtime parameters deliver it.

Data flow of a pipeline run::

    prepare -> [per pass, per coordinate: train -> update_scores -> (evaluate)] -> export -> score

``update_scores`` keeps one score table (uid, label, weight, offset, entity ids and one score
column per coordinate) that carries each coordinate's offsets to the next one: the Parquet store
of :class:`gdmix.ledger.Ledger`, whose rules ``gdmix train`` follows in memory.
"""
