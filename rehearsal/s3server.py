"""Entry point of the rehearsal's S3 container (runs *inside* ``localhost/gdmix-rehearsal-s3``).

moto's S3 behind moto's own request authentication, with exactly one identity: an IAM user
holding the access key / secret key given in ``S3_ACCESS_KEY`` / ``S3_SECRET_KEY`` and an
inline policy allowing ``s3:*``. Authentication is on from the first request
(``INITIAL_NO_AUTH_ACTION_COUNT=0``): a request signed with another key gets
``InvalidAccessKeyId``, one with a wrong secret ``SignatureDoesNotMatch``, an unsigned one
``AccessDenied``. moto's unauthenticated control API (``/moto-api/...``: reset state, switch
auth off) is refused with 403, so the credentials are the only way in.

Standard library + moto only; copied into the image by :mod:`rehearsal.objectstore`.
"""

from __future__ import annotations

import json
import os
import sys

# before moto reads its settings: authentication on from the first request
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"

from moto import settings  # noqa: E402
from moto.core import DEFAULT_ACCOUNT_ID  # noqa: E402
from moto.iam.models import iam_backends  # noqa: E402
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app  # noqa: E402
from werkzeug.serving import run_simple  # noqa: E402

USER = "gdmix-object-store"
POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


def _identity(access_key: str, secret_key: str) -> None:
    if not access_key.startswith("AKIA"):
        # moto treats other key ids as STS session keys, which need a session token
        sys.exit("S3_ACCESS_KEY must start with AKIA (an IAM user's access key id)")
    backend = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.create_user(region_name="us-east-1", user_name=USER)
    key = backend.create_access_key(USER)
    # moto generates random keys; the rehearsal's Secret holds given ones
    key.access_key_id, key.secret_access_key = access_key, secret_key
    backend.access_keys = {k.physical_resource_id: k for k in backend.access_keys.values()}
    backend.put_user_policy(USER, "s3-all", json.dumps(POLICY))


class _NoControlApi:
    """Refuses moto's unauthenticated control endpoints (/moto-api/...)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"the rehearsal object store has no control API\n"]
        return self.app(environ, start_response)


def main() -> None:
    _identity(os.environ["S3_ACCESS_KEY"], os.environ["S3_SECRET_KEY"])
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    port = int(os.environ.get("S3_PORT", "9000"))
    app = DomainDispatcherApplication(create_backend_app)
    print(f"rehearsal S3 (moto) on :{port}, IAM user {USER}, auth on", flush=True)
    run_simple("0.0.0.0", port, _NoControlApi(app), threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
