"""`taskqueue-scaler`: only its usage for now; the scaler itself is not built yet."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """\
usage: taskqueue-scaler run --config scaler.yml [--once] [--dry-run]
       taskqueue-scaler check-config scaler.yml

Sets the desired count of ECS worker services from PromQL rules.
Not implemented yet in this release: only taskqueue-exporter is usable.
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if list(argv) in ([], ["-h"], ["--help"]):
        print(USAGE, end="")
        return 0
    print(USAGE, end="", file=sys.stderr)
    print("taskqueue-scaler: error: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
