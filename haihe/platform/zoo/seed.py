"""Seed the zoo on the first ``haihe up``: ``python -m haihe.platform.zoo.seed <mlflow url> <marker file>``.

Runs as its own process in the background (loading and uploading MiniLM takes ~13 s and ~1 GB of memory that the
``haihe up`` process should not keep). Idempotent twice over: the marker file skips the work on later starts, and
``seed_minilm`` itself does nothing when ``public/minilm-l6@production`` exists.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

from haihe.errors import HaiheError

log = logging.getLogger("haihe.zoo_seed")


def seed(mlflow_url: str, marker: Path) -> int:
    """Seed MiniLM into the zoo at ``mlflow_url``; write ``marker`` when the zoo holds it. Returns an exit code."""
    from haihe.model_zoo import ModelZoo
    from haihe.model_zoo.seed import MINILM_REF, seed_minilm

    if marker.exists():
        return 0
    started = time.monotonic()
    try:
        version = seed_minilm(ModelZoo.connect(mlflow_url))
    except HaiheError as exc:
        log.error("seeding %s failed: %s", MINILM_REF, exc.message)
        return 1
    what = f"registered {version.ref}" if version is not None else "already present"
    log.info("%s@production %s (%.1f s)", MINILM_REF, what, time.monotonic() - started)
    marker.write_text(f"{MINILM_REF}@production\n")
    return 0


def start_in_background(mlflow_url: str, home: Path) -> subprocess.Popen[bytes] | None:
    """Start the seed as a child process logging to ``home/zoo-seed.log``; None when already seeded."""
    marker = home / "zoo-seeded"
    if marker.exists() or not mlflow_url:
        return None
    log_file = (home / "zoo-seed.log").open("ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "haihe.platform.zoo.seed", mlflow_url, str(marker)],
                                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        log_file.close()  # the child holds its own descriptor


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m haihe.platform.zoo.seed <mlflow url> <marker file>", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return seed(args[0], Path(args[1]))


if __name__ == "__main__":
    raise SystemExit(main())
