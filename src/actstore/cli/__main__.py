"""``python -m actstore.cli``: the same as the ``actstore`` command."""

from __future__ import annotations

import sys

from actstore.cli.main import main

sys.exit(main())
