#!/usr/bin/env python3
"""Fail when any layer of an image holds a file named ca-bundle.crt (or its whiteout).

    docker/check-image-layers.py IMAGE...          # exit 1 and a list of hits, else "OK" lines
    docker/check-image-layers.py --name X IMAGE... # another file name (repeatable)

Each image is read with ``docker save IMAGE`` as a stream (nothing is written to disk): every
member of the outer archive that is itself a tar (``<id>/layer.tar`` in docker's own format,
``blobs/sha256/<digest>`` in the OCI layout of newer daemons) is a layer, and every path in every
layer is checked. A file deleted in a later layer is still in the earlier one, and the deletion
shows as a whiteout ``.wh.ca-bundle.crt``: both count. ``docker history`` is checked as well: no
step's ``created_by`` may mention the name (e.g. ``COPY … ca-bundle.crt`` of a single-stage build).

Build-images.sh runs this after every build; tests/test_images.py runs it on the built images and
on a deliberately bad image.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import subprocess
import sys
import tarfile

DEFAULT_NAMES = ("ca-bundle.crt",)


def layer_hits(image: str, names: set[str], docker: str = "docker") -> tuple[int, list[str]]:
    """(number of layers read, ['<layer member>: <path>', ...]) for ``image``."""
    bad = names | {".wh." + n for n in names}
    hits: list[str] = []
    layers = 0
    proc = subprocess.Popen([docker, "save", image], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as outer:
            for member in outer:
                if not member.isfile() or member.name.endswith((".json", "/VERSION", "/json")):
                    continue
                handle = outer.extractfile(member)
                if handle is None:
                    continue
                try:
                    inner = tarfile.open(fileobj=handle, mode="r|*")
                except tarfile.TarError:
                    continue  # not a layer (a config blob, the index, ...)
                layers += 1
                with inner:
                    for entry in inner:
                        if posixpath.basename(entry.name.rstrip("/")) in bad:
                            hits.append(f"{member.name}: {entry.name}")
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise RuntimeError(f"docker save {image} failed (exit {proc.returncode})")
    return layers, hits


def history_hits(image: str, names: set[str], docker: str = "docker") -> list[str]:
    out = subprocess.run([docker, "history", "--no-trunc", "--format", "{{json .CreatedBy}}", image],
                         check=True, capture_output=True, text=True).stdout
    steps = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [step for step in steps if any(n in step for n in names)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--name", action="append", help="file name to look for (default: ca-bundle.crt)")
    args = parser.parse_args(argv)
    names = set(args.name or DEFAULT_NAMES)
    docker = os.environ.get("DOCKER", "docker")
    failed = False
    for image in args.images:
        layers, hits = layer_hits(image, names, docker)
        steps = history_hits(image, names, docker)
        if layers == 0:
            print(f"{image}: docker save gave no layers", file=sys.stderr)
            failed = True
        elif hits or steps:
            failed = True
            print(f"{image}: {', '.join(sorted(names))} found in {len(hits)} layer entries, "
                  f"{len(steps)} history steps:", file=sys.stderr)
            for line in hits + [f"history: {s}" for s in steps]:
                print(f"  {line}", file=sys.stderr)
        else:
            print(f"{image}: OK, no {', '.join(sorted(names))} in any of {layers} layers or the history")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
