"""The Prefect flow end to end on tiny data, its caching, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import (
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_LOCAL_STORAGE_PATH,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness

from fdd.config import ConfigError
from flows import cli
from flows.pipeline import STAGES, compare_flow, load_config, run_single_stage
from tasks.base import MANIFEST

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    storage = tmp_path_factory.mktemp("prefect-results")
    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_LOCAL_STORAGE_PATH: storage}):
            yield storage


def _task_states(flow_run_id, expected: int = 9) -> dict[str, str]:
    """Task run name -> final state name for one flow run.

    The harness records task-run states asynchronously, so poll (bounded) until all
    ``expected`` runs are there with a final state.
    """
    import time

    import anyio

    async def read() -> dict[str, str | None]:
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return {
                run.name: (run.state.name if run.state is not None and run.state.is_final() else None) for run in runs
            }

    deadline = time.monotonic() + 60
    while True:
        states = anyio.run(read)
        if (len(states) >= expected and None not in states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def test_flow_end_to_end_caches_and_reruns_only_downstream(harness, tiny_workspace: Path) -> None:
    ws = str(tiny_workspace)
    config = load_config(tiny_workspace / "params.yaml")
    state = compare_flow(config, workspace=ws, return_state=True)
    assert state.is_completed()
    metrics = json.loads((tiny_workspace / "data/metrics.json").read_text())
    assert set(metrics) == {"vanilla", "cobra"}
    for values in metrics.values():
        assert 0.0 <= values["accuracy"] <= 100.0 and 0.0 <= values["deo_m"] <= 100.0
    for folder in ("prepared", "partition", "features", "barycenters", "synthetic/cobra", "audit/vanilla", "report"):
        assert (tiny_workspace / "data" / folder / MANIFEST).exists(), folder
    report = (tiny_workspace / "data/report/report.md").read_text()
    assert "DEO_M" in report and "barycenter" in report
    first = _task_states(state.state_details.flow_run_id)
    assert len(first) == 4 + 2 * 2 + 1  # ingest..barycenters, 2 modes x 2 stages, report
    assert all(name == "Completed" for name in first.values()), first

    again = compare_flow(config, workspace=ws, return_state=True)
    second = _task_states(again.state_details.flow_run_id)
    assert set(second.values()) == {"Cached"}, second
    assert json.loads((tiny_workspace / "data/metrics.json").read_text()) == metrics

    changed = load_config(tiny_workspace / "params.yaml", overrides={"audit": {"epochs": 6}})
    third_state = compare_flow(changed, workspace=ws, return_state=True)
    third = _task_states(third_state.state_details.flow_run_id)
    rerun = {name for name, s in third.items() if s != "Cached"}
    assert rerun == {"audit[vanilla]", "audit[cobra]", "report"}, third
    third_metrics = json.loads((tiny_workspace / "data/metrics.json").read_text())

    # an output altered on disk is not trusted: its stage runs again
    synthetic = tiny_workspace / "data/synthetic/cobra/synthetic.pt"
    synthetic.write_bytes(synthetic.read_bytes()[:-10])
    fourth_state = compare_flow(changed, workspace=ws, return_state=True)
    fourth = _task_states(fourth_state.state_details.flow_run_id)
    assert fourth["synthesize[cobra]"] == "Completed" and fourth["synthesize[vanilla]"] == "Cached", fourth

    # the stages' manifests are the only cache: no stage persists a result to Prefect's storage or looks one up
    from prefect.cache_policies import NO_CACHE

    from tasks.audit import audit_set
    from tasks.ingest import ingest
    from tasks.report import write_report

    for stage_task in (ingest, audit_set, write_report):
        assert stage_task.persist_result is False and stage_task.cache_policy is NO_CACHE, stage_task.name
    # damaged manifests are never trusted: every stage recomputes, with the same results
    for manifest in (tiny_workspace / "data").rglob(MANIFEST):
        manifest.write_bytes(manifest.read_bytes()[: manifest.stat().st_size // 2])
    fifth_state = compare_flow(changed, workspace=ws, return_state=True)
    fifth = _task_states(fifth_state.state_details.flow_run_id)
    assert set(fifth.values()) == {"Completed"}, fifth
    assert json.loads((tiny_workspace / "data/metrics.json").read_text()) == third_metrics


class _WritesAFile:
    """Unpickling this runs ``Path(marker).write_text("pwned")``: what a hostile record could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_planted_pickle_records_are_never_read(harness, tiny_workspace: Path) -> None:
    """A record under Prefect's result storage names its own deserialiser; fdd reads none of them."""
    from prefect.results import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    ws = str(tiny_workspace)
    config = load_config(tiny_workspace / "params.yaml")
    assert compare_flow(config, workspace=ws, return_state=True).is_completed()
    marker = tiny_workspace / "pwned.txt"
    record = ResultRecord(
        metadata=ResultRecordMetadata(storage_key="planted", serializer=PickleSerializer()), result=_WritesAFile(marker)
    ).serialize()
    ResultRecord.deserialize(record)  # the payload is live: Prefect's reader runs it
    assert marker.read_text() == "pwned"
    marker.unlink()
    # plant it under every name a cache hit of a stage could look up: <stage>-<key> (Prefect's
    # cache_key_fn naming) and <key>, in the harness's storage and in the workspace's .prefect/storage
    planted = []
    for manifest in (tiny_workspace / "data").rglob(MANIFEST):
        key = json.loads(manifest.read_text())["cache_key"]
        stage = {"prepared": "ingest", "synthetic": "synthesize", "audit": "audit"}.get(
            manifest.parent.relative_to(tiny_workspace / "data").parts[0], manifest.parent.name
        )
        for folder in (Path(harness), tiny_workspace / ".prefect/storage"):
            for name in (f"{stage}-{key}", key):
                folder.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(record)
                planted.append(folder / name)
    assert len(planted) == 4 * 9
    before = {p: p.stat().st_mtime_ns for p in (tiny_workspace / "data").rglob(MANIFEST)}
    again = compare_flow(config, workspace=ws, return_state=True)
    assert again.is_completed()
    assert not marker.exists()
    states = _task_states(again.state_details.flow_run_id)
    assert set(states.values()) == {"Cached"}, states  # served from the manifests, nothing recomputed
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_single_stages_without_prefect_match_the_flow_outputs(tiny_workspace: Path) -> None:
    config = load_config(tiny_workspace / "params.yaml")
    ws = str(tiny_workspace)
    outputs = {}
    for stage in STAGES:
        if stage in ("synthesize", "audit"):
            for mode in config.synthesis.modes:
                outputs.update(run_single_stage(stage, config, ws, mode))
        else:
            outputs.update(run_single_stage(stage, config, ws))
    assert "data/metrics.json" in outputs
    assert (tiny_workspace / "data/plots/losses/cobra.csv").exists()
    with pytest.raises(ValueError, match="needs --mode"):
        run_single_stage("audit", config, ws)


def test_upstream_file_changed_is_refused(tiny_workspace: Path) -> None:
    config = load_config(tiny_workspace / "params.yaml")
    ws = str(tiny_workspace)
    run_single_stage("ingest", config, ws)
    train = tiny_workspace / "data/prepared/train.pt"
    train.write_bytes(train.read_bytes() + b"x")
    with pytest.raises(ValueError, match="changed since the upstream stage wrote it"):
        run_single_stage("partition", config, ws)
    assert not (tiny_workspace / "data/partition").exists()


def test_config_errors_name_the_key(tiny_workspace: Path) -> None:
    with pytest.raises(ConfigError, match="synthesis.iteration"):
        load_config(tiny_workspace / "params.yaml", overrides={"synthesis": {"iteration": 5}})
    with pytest.raises(ConfigError, match="data.bias"):
        load_config(tiny_workspace / "params.yaml", overrides={"data": {"bias": "sideways"}})


def test_cli_reports_bad_config_and_unknown_preset(tiny_workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = str(tiny_workspace / "params.yaml")
    code = cli.main(["run", "--params", params, "--workspace", str(tiny_workspace), "--set", "synthesis.ipc=-3"])
    assert code == 2
    assert "synthesis.ipc" in capsys.readouterr().err
    code = cli.main(["run", "--params", params, "--preset", "nope", "--workspace", str(tiny_workspace)])
    assert code == 2 and "unknown preset 'nope'" in capsys.readouterr().err  # a user error: exit 2, not a traceback


def test_shipped_params_and_presets_validate() -> None:
    root = Path(__file__).resolve().parent.parent
    quick = load_config(root / "params.yaml")
    full = load_config(root / "params.yaml", preset=root / "flows/presets/full.yaml")
    assert quick.synthesis.modes == ("vanilla", "cobra")
    assert (full.synthesis.iterations, full.synthesis.batch_real, full.network.width) == (2600, 600, 128)
    assert full.synthesis.resolved_warmup_epochs() == 10 and full.audit.epochs == 1500 and full.audit.num_eval == 5
    assert (
        yaml.safe_load((root / "flows/presets/quick.yaml").read_text())["synthesis"]["iterations"]
        == quick.synthesis.iterations
    )
    assert full.synthesis.compile and full.synthesis.cuda_graph
    cfmnist = load_config(
        root / "params.yaml", preset=[root / "flows/presets/cfmnist.yaml", root / "flows/presets/full.yaml"]
    )
    assert (cfmnist.data.dataset, cfmnist.data.shading, cfmnist.synthesis.iterations) == ("cfmnist", "intensity", 2600)
    assert quick.data.shading == "binary"


def test_distill_with_a_mode_the_backbone_lacks_exits_2_and_writes_nothing(tiny_workspace: Path, capsys) -> None:
    from flows import cli

    before = sorted(p.relative_to(tiny_workspace) for p in tiny_workspace.rglob("*"))
    code = cli.main(
        [
            "distill",
            "--mode",
            "cobra-w2",
            "--params",
            str(tiny_workspace / "params.yaml"),
            "--workspace",
            str(tiny_workspace),
            "--set",
            "synthesis.backbone=dc",
        ]
    )
    assert code == 2
    assert "cobra-w2" in capsys.readouterr().err
    assert sorted(p.relative_to(tiny_workspace) for p in tiny_workspace.rglob("*")) == before
