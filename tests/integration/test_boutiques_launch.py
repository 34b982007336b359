"""End to end through Boutiques: ``bosh exec launch --no-container`` runs the installed qsmprep
on one simulated participant (QSM only) and finds the outputs the descriptor declares."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

boutiques = pytest.importorskip("boutiques")

DESCRIPTOR = Path(__file__).resolve().parents[2] / "boutiques.json"
PARTICIPANT = "control"


@pytest.fixture(scope="module")
def launched(demo_bids, tmp_path_factory):
    base = tmp_path_factory.mktemp("boutiques")
    invocation = {
        "bids_dir": str(demo_bids),
        "output_dir_name": str(base / "out"),
        "analysis_level": "participant",
        "participant_label": [PARTICIPANT],
        "nprocs": 2,
        "omp_nthreads": 1,
        "qsm_only": True,
        "work_dir": str(base / "work"),
    }
    invocation_path = base / "invocation.json"
    invocation_path.write_text(json.dumps(invocation, indent=2))
    with pytest.MonkeyPatch.context() as patch:
        # the command runs in a shell: the qsmprep found first on PATH must be this one
        patch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        patch.chdir(base)
        result = boutiques.execute("launch", str(DESCRIPTOR), str(invocation_path),
                                   "--no-container", "--skip-data-collection")
    return {"result": result, "out": base / "out"}


def test_launch_succeeds(launched):
    result = launched["result"]
    assert result.exit_code == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert result.shell_command.startswith(f"mkdir -p {launched['out']}; qsmprep ")
    assert result.container_command is None or result.container_command == ""


def test_declared_output_folder_is_found(launched):
    result = launched["result"]
    assert result.missing_files == []
    assert [Path(found.file_name) for found in result.output_files] == [launched["out"]]


def test_documented_derivatives_of_a_qsm_only_run(launched, descriptor_derivatives):
    """The files listed in custom['qsmprep:derivatives'] exist exactly when documented."""
    out = launched["out"]
    for entry in descriptor_derivatives:
        pattern = entry["glob"].replace("sub-*", f"sub-{PARTICIPANT}")
        found = sorted(out.glob(pattern))
        if entry["analysis-level"] != "group" and entry["with-qsm-only"]:
            assert found, f"{entry['id']}: nothing matches {pattern}"
        else:
            assert not found, f"{entry['id']}: unexpected {found}"
    assert not list(out.glob("sub-cbs*")), "only the participant of the invocation"
    (sidecar,) = out.glob(f"sub-{PARTICIPANT}/**/anat/sub-{PARTICIPANT}_Chimap.json")
    assert json.loads(sidecar.read_text())["Units"] == "ppm"


@pytest.fixture(scope="module")
def descriptor_derivatives():
    return json.loads(DESCRIPTOR.read_text())["custom"]["qsmprep:derivatives"]
