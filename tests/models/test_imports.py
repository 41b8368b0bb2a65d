from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_models_import_neither_ray_nor_mlflow():
    code = "import sys, models; print(sorted({'ray', 'mlflow'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).parents[2])
    assert result.stdout.strip() == "[]"
