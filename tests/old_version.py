"""The code before the ``data`` config was split (issue 23), checked out from git for the tests that
compare old and new: composed configs, cache fingerprints, and checkpoints the old code wrote.

Nothing binary is kept in git: the old tree is ``git archive <OLD_COMMIT>`` of this repository's own
history (a clean ``git clone`` has it), extracted once per test session.
"""

from __future__ import annotations

import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: the last commit whose ``data`` config is flat (``data.regions``, ``data.spacing``, ... side by side)
OLD_COMMIT = "60dd6e4"


def extract_old_tree(destination: Path) -> Path:
    """``git archive OLD_COMMIT`` of this repository extracted into ``destination`` (returned).

    Fails the test (not skips it) with what to do when the commit is not in the history, e.g. a
    shallow clone.
    """
    result = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", OLD_COMMIT], capture_output=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"commit {OLD_COMMIT} (the code before the data config was split) is not in the git history of {REPO}: "
            f"{result.stderr.decode(errors='replace').strip()}. These tests compare against it; run them in a full "
            "clone (git fetch --unshallow)",
            pytrace=False,
        )
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=BytesIO(result.stdout)) as archive:
        archive.extractall(destination, filter="data")
    return destination


@pytest.fixture(scope="session")
def old_tree(tmp_path_factory) -> Path:
    """The repository at :data:`OLD_COMMIT`, extracted once per session."""
    return extract_old_tree(tmp_path_factory.mktemp("old_version"))
