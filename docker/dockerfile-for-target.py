#!/usr/bin/env python3
"""Print a multi-stage Dockerfile cut down to the stages a --target needs.

    docker/dockerfile-for-target.py docker/Dockerfile spark > /tmp/Dockerfile.spark

The classic builder (DOCKER_BUILDKIT=0) builds every stage above --target, used or not, so
`--target spark` of docker/Dockerfile would also build TensorFlow and compile Horovod. This keeps
the lines before the first FROM (global ARGs), the target's stage and, transitively, the stages it
names in ``FROM <stage>`` or ``COPY --from=<stage>``, in their original order and unchanged, so
the instructions (and therefore the layer cache) are the same as the full file's.
"""

from __future__ import annotations

import re
import sys

FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)
COPY_FROM = re.compile(r"^\s*COPY\s+(?:--\S+\s+)*?--from=(\S+)", re.IGNORECASE | re.MULTILINE)


def stages(text: str) -> tuple[list[str], list[tuple[str, str, list[str]]]]:
    """(lines before the first FROM, [(name, base, lines), ...])."""
    head: list[str] = []
    out: list[tuple[str, str, list[str]]] = []
    for line in text.splitlines(keepends=True):
        m = FROM.match(line)
        if m:
            base, name = m.group(1), m.group(2) or str(len(out))
            out.append((name.lower(), base.lower(), [line]))
        elif out:
            out[-1][2].append(line)
        else:
            head.append(line)
    return head, out


def cut(text: str, target: str) -> str:
    head, all_stages = stages(text)
    by_name = {name: (base, lines) for name, base, lines in all_stages}
    if target.lower() not in by_name:
        raise SystemExit(f"no stage '{target}' (stages: {', '.join(by_name)})")
    need: set[str] = set()
    todo = [target.lower()]
    while todo:
        name = todo.pop()
        if name in need:
            continue
        need.add(name)
        base, lines = by_name[name]
        deps = [base] + [d.lower() for d in COPY_FROM.findall("".join(lines))]
        todo.extend(d for d in deps if d in by_name)
    return "".join(head) + "".join("".join(lines) for name, _, lines in all_stages if name in need)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: dockerfile-for-target.py DOCKERFILE TARGET")
    with open(sys.argv[1]) as handle:
        sys.stdout.write(cut(handle.read(), sys.argv[2]))
