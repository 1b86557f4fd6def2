import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Tests import their shared model builders as a plain module.
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Commands cache base SVDs under the user's cache folder by default; tests keep theirs apart.
if "DELTAW_CACHE_DIR" not in os.environ:
    os.environ["DELTAW_CACHE_DIR"] = tempfile.mkdtemp(prefix="deltaw-test-cache-")
    atexit.register(shutil.rmtree, os.environ["DELTAW_CACHE_DIR"], ignore_errors=True)
