"""What every component declaration shares: its image and the launcher passthroughs."""

from kfp import dsl

from gdmix.images import image

# the task's resources, env, tolerations, node selector, affinity and volumes reach the
# workloads a launcher creates (TFJob workers, Spark executors)
LAUNCHER_PASSTHROUGHS = [
    dsl.TaskConfigField.RESOURCES,
    dsl.TaskConfigField.ENV,
    dsl.TaskConfigField.KUBERNETES_TOLERATIONS,
    dsl.TaskConfigField.KUBERNETES_NODE_SELECTOR,
    dsl.TaskConfigField.KUBERNETES_AFFINITY,
    dsl.TaskConfigField.KUBERNETES_VOLUMES,
]


def component(role: str, launcher: bool = False):
    """``@dsl.component`` running in the ``role`` image (kfp is baked into every image)."""
    options = {"base_image": image(role), "install_kfp_package": False}
    if launcher:
        options["task_config_passthroughs"] = LAUNCHER_PASSTHROUGHS
    return dsl.component(**options)
