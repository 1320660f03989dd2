"""The vLLM lane's SmolLM2, exported ahead of the lane (`helpers.smollm2_cache`): `make test`
runs this in the background while the main lane runs, whose cores are about a fifth idle,
so that the vLLM lane's fixture finds it there. Run with the vLLM lane's Python."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import export_smollm2, smollm2_cache  # noqa: E402

if __name__ == "__main__":
    print(f"SmolLM2 exported: {export_smollm2(smollm2_cache())}")
