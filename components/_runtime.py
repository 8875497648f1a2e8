"""Code that component bodies import at run time, inside the step's container.

A lightweight component embeds only its own function's source; the gdmix wheel installs this
package in every image, so a body may import from here. The KFP executor runs with
``_KFP_RUNTIME=true``, where ``kfp.dsl`` holds only the run-time types (no ``component``, no
``TaskConfigPassthrough``): this module must not import kfp's compile-time API, which is why it
is not :mod:`gdmix_components._shared` (tests/test_layers.py imports it that way).
"""


def fixed_effect_launcher(config, coordinate, prepared, model, task_config, scores=None, previous=None,
                          overrides=(), data_root="", workload_image=""):
    """The body of both fixed-effect launchers, ``fixed_effect`` (logistic regression) and ``detext``:
    their parameters, in their order."""
    from gdmix.stages.training import fixed_effect_step

    fixed_effect_step(config, list(overrides), coordinate, prepared, model, scores, previous, data_root,
                      workload_image, task_config)


def log_evaluation(result, split, metrics, roc, report):
    """Hand an evaluation (:class:`gdmix.stages.evaluation.StepEvaluation`) to the KFP UI: its
    metrics (a split other than validation named first, ``test_auc``), ROC curve and HTML report.

    Shared by every step that evaluates (``evaluate``, and ``update_scores`` and ``score``, which
    evaluate what they have just written so that a pass or the final scoring costs no extra step:
    each step is a process, a pod in a cluster, whose start-up costs more than the evaluation)."""
    prefix = "" if split in ("", "validation") else f"{split}_"
    for name, value in result.metrics.items():
        metrics.log_metric(prefix + name, value)
    if result.roc is not None:  # None when the labels hold one class only
        roc.log_roc_curve(*result.roc)
    with open(report.path, "w", encoding="utf-8") as handle:
        handle.write(result.html)
