"""The benchmark harness lives in ``bench/`` at the repository root, which is not an installed
package; put the root on ``sys.path`` so the tests import it the way ``python -m bench...``
run from a checkout does."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
