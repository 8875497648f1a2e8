"""Where a stage's data lives.

In a cluster a KFP artifact's ``uri`` is an object-store URI (``s3://``, ``gs://``, or
``minio://`` for the MinIO that ships with Kubeflow Pipelines) and stages read and write it
directly with fsspec: large data never passes through the KFP launcher's local copies. Under
``kfp.local`` an artifact's URI is a local directory; a ``data_root`` (say ``s3://bucket/runs``)
moves the data into an object store all the same. The producing stage records the location in
the artifact's metadata, and consumers read it from there.
"""

from __future__ import annotations

import hashlib
import os
import posixpath

from gdmix.errors import GdmixError
from gdmix.io import fs

METADATA_KEY = "location"
#: set on every step of a pipeline compiled with ``pipeline.object_store_secret``: the Secret's name
SECRET_NAME_ENV = "GDMIX_OBJECT_STORE_SECRET"
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def output_location(artifact_uri: str, data_root: str | None = None) -> str:
    """The URI a stage writes an output artifact's data to."""
    if not data_root:
        return normalize(artifact_uri)
    digest = hashlib.sha1(artifact_uri.encode()).hexdigest()[:16]
    return fs.join(data_root, digest, posixpath.basename(artifact_uri.rstrip("/")))


def input_location(artifact_uri: str, metadata: dict | None) -> str:
    """The URI of an input artifact's data: the producer's recorded location, else its URI."""
    recorded = (metadata or {}).get(METADATA_KEY)
    return normalize(recorded or artifact_uri)


def normalize(uri: str) -> str:
    """KFP's ``minio://bucket/key`` is S3 for fsspec (the endpoint comes from the environment,
    AWS_ENDPOINT_URL, set from the object-store Secret)."""
    if uri.startswith("minio://"):
        return "s3://" + uri[len("minio://"):]
    return uri


def read_location(artifact) -> str:
    """Where an input artifact's data is (any object with ``uri`` and ``metadata``, e.g. a KFP artifact)."""
    return require_credentials(input_location(artifact.uri, getattr(artifact, "metadata", None)))


def claim_location(artifact, data_root: str | None = None) -> str:
    """Choose where an output artifact's data goes and record it in the artifact's metadata."""
    location = require_credentials(output_location(artifact.uri, data_root))
    artifact.metadata[METADATA_KEY] = location
    return location


def require_credentials(uri: str, environ=os.environ) -> str:
    """``uri``, after checking that a pipeline step that must reach the object store can.

    In a pipeline compiled with an object-store Secret every step gets the Secret's keys as
    environment variables. An empty or absent key (a Secret created with blank values, or a
    step that did not get it) would otherwise surface much later as an anonymous request
    refused by the store; this names the Secret to fix instead. Only in a pod (the kubelet sets
    ``KUBERNETES_SERVICE_HOST``): under kfp.local the Secret plays no part, and a profile or
    instance credentials may serve instead.
    """
    secret = environ.get(SECRET_NAME_ENV)
    if not secret or not uri.startswith("s3://") or not environ.get("KUBERNETES_SERVICE_HOST"):
        return uri
    missing = [key for key in CREDENTIAL_KEYS if not environ.get(key)]
    if missing:
        raise GdmixError(
            f"no object-store credentials for {uri}: {', '.join(missing)} empty or unset. They come from the "
            f"Kubernetes Secret '{secret}' (keys {', '.join(CREDENTIAL_KEYS)}, AWS_ENDPOINT_URL), which must exist "
            f"with non-empty values in the namespace this step runs in (KFP standalone: 'kubeflow'; multi-user "
            f"Kubeflow: the profile's namespace); see manifests/object-store")
    return uri
