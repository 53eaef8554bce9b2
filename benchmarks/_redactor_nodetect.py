"""The redactor service with sensitive-data detection replaced by a stub. Benchmark only.

``benchmarks.pipeline_bench`` starts this as a process exactly like ``services.redactor``
(same settings, same loop, same Kafka transactions) to measure what the service does per
event without detection. It is not a production switch: nothing in ``services/`` or the
settings can turn detection off.
"""

from __future__ import annotations

import services.redactor.redact as redact
from services.redactor.app import main


def _no_detection(*texts: str | None) -> dict[str, int]:
    return {}


if __name__ == "__main__":
    redact.scan_all = _no_detection  # Redactor._redact looks the name up at call time
    main()
