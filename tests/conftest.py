"""Shared test settings: where the real data lives (``../shared/data/acdc`` from the project root,
or ``$MTSSL_ACDC``). Tests that need it skip, naming the path they looked at."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACDC = Path(os.environ.get("MTSSL_ACDC", ROOT.parent / "shared" / "data" / "acdc"))
