"""Load: a burst of studies C-STOREd into Orthanc (with the cxr plugin), all of which must be
analysed (0 lost). Prints p50/p95 arrival-to-results latency, throughput and the peak RSS of
the service (and workers). Same machinery as bench/e2e.py, with load defaults.

    .venv/bin/python bench/load.py                                  # 200 studies, embedded SQLite queue
    .venv/bin/python bench/load.py --backend redis --workers 2      # the same on 2 Redis workers
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import get_args_parser, run  # noqa: E402


def main() -> None:
    parser = get_args_parser(studies=200, size=(512, 768))
    parser.description = __doc__.split("\n\n")[0]
    result = run(parser.parse_args())
    lost = result["sent"] - result["analysed"]
    print(f"lost: {lost}")
    if lost:
        sys.exit(1)


if __name__ == "__main__":
    main()
