"""What every component declaration shares: its image and, for launchers, the task-config passthrough.

A *launcher* step (prepare, fixed_effect, detext) runs its work in two ways, fixed when the
pipeline is compiled (``pipeline.backend``):

- ``local``: the work runs inside the step's own pod, so everything written on the task
  (resources, env, tolerations, volumes, ...) must land on that pod. That is what the KFP
  driver does for a component that declares no passthrough, so the local variant declares none.
- ``kubernetes``: the step only creates a TFJob / MPIJob / SparkApplication and watches it. The
  settings are handed to it as a ``dsl.TaskConfig`` so it can put them on the job's pods. The
  KFP driver takes a passed-through field *off* the step's own pod unless ``apply_to_task`` is
  set (kubeflow/pipelines 2.17.0, ``backend/src/v2/driver/driver.go``, ``getTaskConfigOptions``):
  the env must stay on the step too, since the launcher itself reads and writes the object store
  with the credentials ``kubernetes.use_secret_as_env`` provides, and so must volumes (a
  launcher writes the job's config where its pods read it). Resources, tolerations, node
  selector and affinity go to the job only: the launcher is a light process, and giving it the
  workers' CPUs or GPUs would double what the run reserves.
"""

from kfp import dsl

from gdmix.images import image

#: the kubernetes variant's passthroughs (see the module docstring for what applies to the step itself)
LAUNCHER_PASSTHROUGHS = [
    dsl.TaskConfigPassthrough(dsl.TaskConfigField.ENV, apply_to_task=True),
    dsl.TaskConfigPassthrough(dsl.TaskConfigField.KUBERNETES_VOLUMES, apply_to_task=True),
    dsl.TaskConfigPassthrough(dsl.TaskConfigField.RESOURCES, apply_to_task=False),
    dsl.TaskConfigPassthrough(dsl.TaskConfigField.KUBERNETES_TOLERATIONS, apply_to_task=False),
    dsl.TaskConfigPassthrough(dsl.TaskConfigField.KUBERNETES_NODE_SELECTOR, apply_to_task=False),
    dsl.TaskConfigPassthrough(dsl.TaskConfigField.KUBERNETES_AFFINITY, apply_to_task=False),
]

#: attribute of a launcher component holding its ``backend: local`` variant
IN_POD = "in_pod_variant"


def component(role: str, launcher: bool = False):
    """``@dsl.component`` running in the ``role`` image (kfp is baked into every image).

    A launcher returns its ``backend: kubernetes`` variant (with the passthroughs; its
    ``component.yaml`` is what other pipelines reuse) and carries the ``local`` variant as
    :data:`IN_POD`; :func:`for_backend` picks one.
    """
    options = {"base_image": image(role), "install_kfp_package": False}

    def declare(func):
        if not launcher:
            return dsl.component(func=func, **options)
        cluster = dsl.component(func=func, task_config_passthroughs=LAUNCHER_PASSTHROUGHS, **options)
        setattr(cluster, IN_POD, dsl.component(func=func, **options))
        return cluster

    return declare


def for_backend(launcher_component, backend: str):
    """The variant of a launcher component for ``pipeline.backend`` (others are returned as they are)."""
    if backend == "local":
        return getattr(launcher_component, IN_POD, launcher_component)
    return launcher_component
