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
