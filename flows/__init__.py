

import os as _os

from pipeline.cli import QUIET_ENV as _QUIET_ENV

# before Prefect is imported: no telemetry heartbeat (and no "Failed to send telemetry" error) offline
for _k, _v in _QUIET_ENV.items():
    _os.environ.setdefault(_k, _v)
