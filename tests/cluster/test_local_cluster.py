"""`caviar submit --follow` against a real two-node Ray cluster and a real MLflow server.

The cluster is the compose topology started as local processes (see conftest.py): a Ray head
and a Ray worker with one CPU each, token authentication on, and an MLflow tracking server in
the head's MLFLOW_TRACKING_URI whose backend store is a PostgreSQL server started for the module,
as compose deploys it. One small sweep is submitted once per module; each test reads back one
thing it left behind. Everything is torn down at the end, also on failure.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import mlflow
import mlflow.artifacts
import pytest
from conftest import run_caviar
from mlflow import MlflowClient
from postgres import PostgresServer, unavailable

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

# The sweep is the user's own model (examples/own_model/models.py, copied beside the spec as a
# user's project would have it): the job's folder must reach the driver and every trial actor
# on both nodes. Each trial trains for several seconds (12,000 rows in batches of 16): longer
# than starting a trial actor on the second node (about 6 s on 2 busy cores). With shorter
# trials Tune hands every trial to the first actor as it frees up, and the second node never
# runs one.
MODELS = Path(__file__).resolve().parents[2] / "examples" / "own_model" / "models.py"
SPEC = """
name: cluster-sweep
trainable: models:DIGITS_CNN
data: {source: synthetic, n_samples: 12000, n_features: 64, n_classes: 3, seed: 0}
space:
  learning_rate: {scale: log, low: 0.01, high: 0.3}
  channels: {values: [4, 8]}
fixed: {momentum: 0.9, batch_size: 16}
search: {num_trials: 6, seed: 1}
scheduler: {kind: fifo, max_epochs: 8}
resources: {cpus_per_trial: 1}
storage: {checkpoint_every_s: 0}
"""
N_TRIALS = 6


def caviar(
    cluster: Any, *args: str, cwd: Path, token: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real `caviar` against the cluster, token from the environment as a user would."""
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token if token is None else token}
    if token == "":
        env = {"RAY_AUTH_MODE": "token"}
    return run_caviar(*args, "--address", cluster.address, cwd=cwd, timeout=timeout, **env)


@pytest.fixture(scope="module")
def sweep(local_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("submit")
    (folder / "sweep.yaml").write_text(SPEC)
    (folder / "models.py").write_text(MODELS.read_text())
    started = time.monotonic()
    try:
        result = caviar(local_cluster, "submit", "sweep.yaml", "--follow", cwd=folder, timeout=420)
    except subprocess.TimeoutExpired as timeout:
        out = timeout.stdout or b""  # bytes even with text=True: run() re-raises it raw
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        pytest.fail(
            f"the sweep outlived {timeout.timeout} s:\n{out[-4000:]}\n{local_cluster.logs()}"
        )
    seconds = time.monotonic() - started
    assert result.returncode == 0, (
        result.stdout[-4000:] + result.stderr[-3000:] + local_cluster.logs()
    )
    job = re.search(r"submitted job (\S+)", result.stdout)
    assert job, result.stdout
    client = MlflowClient(local_cluster.mlflow_uri)
    experiment = client.get_experiment_by_name("cluster-sweep")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return {
        "folder": folder,
        "result": result,
        "seconds": seconds,
        "job": job.group(1),
        "client": client,
        "experiment_id": experiment.experiment_id,
        "runs": runs,
        "parents": [r for r in runs if r.data.tags.get("caviar.kind") == "sweep"],
        "children": [r for r in runs if "mlflow.parentRunId" in r.data.tags],
    }


def test_submit_follow_streams_the_sweep_and_ends_succeeded(sweep: dict[str, Any]) -> None:
    out, err = sweep["result"].stdout, sweep["result"].stderr
    job = sweep["job"]
    assert job.startswith("caviar-cluster-sweep-")
    for fragment in (
        f"/#/jobs/{job}",  # the dashboard
        "experiment 'cluster-sweep' at the cluster's MLFLOW_TRACKING_URI",
        "Sweep cluster-sweep",  # the sweep's own summary, streamed from the cluster
        f"trials:          {N_TRIALS} (",
        f"caviar: job {job} SUCCEEDED",
    ):
        assert fragment in out, fragment
    assert "Traceback" not in err


def test_mlflow_server_holds_the_parent_run_and_its_children(
    sweep: dict[str, Any], local_cluster: Any, tmp_path: Path
) -> None:
    (parent,) = sweep["parents"]
    assert parent.info.status == "FINISHED"
    children = sweep["children"]
    assert len(children) == N_TRIALS
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    assert parent.data.metrics["trials_completed"] == N_TRIALS
    # Artifacts went through the tracking server (--serve-artifacts): the spec and the best
    # model come back from it, not from a path on the cluster's disk.
    artifacts = {a.path for a in sweep["client"].list_artifacts(parent.info.run_id)}
    assert "spec" in artifacts
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(local_cluster.mlflow_uri)  # models:/ URIs resolve through it
    try:
        model = mlflow.artifacts.download_artifacts(
            artifact_uri=parent.data.tags["caviar.model_uri"], dst_path=str(tmp_path)
        )
    finally:
        mlflow.set_tracking_uri(previous)
    assert (Path(model) / "MLmodel").is_file()
    # The user's model travelled with the job and was logged with its code.
    assert parent.data.params["trainable"] == "models:DIGITS_CNN"
    assert (Path(model) / "code" / "models.py").is_file()
    assert f"parent run {parent.info.run_id} at {local_cluster.mlflow_uri}" in (
        sweep["result"].stdout
    )


@pytest.fixture(scope="module")
def postgres(request: pytest.FixtureRequest) -> PostgresServer:
    """The cluster's PostgreSQL server; a skip, before any cluster starts, where there is none."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"the cluster's MLflow server runs on SQLite here: {reason}")
    server: PostgresServer = request.getfixturevalue("local_cluster").postgres
    return server


def test_the_mlflow_server_keeps_the_sweep_in_postgresql(
    postgres: PostgresServer, sweep: dict[str, Any], local_cluster: Any
) -> None:
    """Read MLflow's tables straight from PostgreSQL: the runs the server reported are there."""
    tables = postgres.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    assert {"alembic_version", "experiments", "runs"} <= {name for (name,) in tables}, (
        f"MLflow never migrated the PostgreSQL database (tables: {tables}): its store is elsewhere"
    )
    rows = postgres.query("SELECT experiment_id FROM experiments WHERE name = %s", "cluster-sweep")
    assert rows, "no 'cluster-sweep' experiment in PostgreSQL: the MLflow server wrote elsewhere"
    ((experiment_id,),) = rows
    assert str(experiment_id) == sweep["experiment_id"]
    runs = postgres.query(
        "SELECT run_uuid, status FROM runs WHERE experiment_id = %s", experiment_id
    )
    assert len(runs) == N_TRIALS + 1  # the parent and one run per trial
    assert {run_id for run_id, _ in runs} == {r.info.run_id for r in sweep["runs"]}
    assert {status for _, status in runs} == {"FINISHED"}
    (parent,) = sweep["parents"]
    children = postgres.query(
        "SELECT count(*) FROM tags JOIN runs USING (run_uuid) "
        "WHERE runs.experiment_id = %s AND tags.key = 'mlflow.parentRunId' AND tags.value = %s",
        experiment_id,
        parent.info.run_id,
    )
    assert children == [(N_TRIALS,)]
    completed = postgres.query(
        "SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = 'trials_completed'",
        parent.info.run_id,
    )
    assert completed == [(float(N_TRIALS),)]
    assert not list(local_cluster.root.glob("*.db"))  # no SQLite store beside the services


def test_trials_ran_on_both_ray_nodes(sweep: dict[str, Any], local_cluster: Any) -> None:
    nodes = {str(n["node_id"]) for n in local_cluster.alive_nodes()}
    assert len(nodes) == 2
    used = {c.data.tags.get("caviar.node_id") for c in sweep["children"]}
    assert used == nodes, (used, nodes)


def test_results_land_on_the_clusters_shared_storage(
    sweep: dict[str, Any], local_cluster: Any
) -> None:
    sweep_dirs = [p for p in (local_cluster.storage / "cluster-sweep").iterdir() if p.is_dir()]
    assert len(sweep_dirs) == 1 and sweep_dirs[0].is_dir()
    # The sweep's journal and Tune's results (the trials' checkpoints) are in it.
    assert (sweep_dirs[0] / "journal.jsonl").is_file()
    assert list(sweep_dirs[0].glob("tune-1/trial_*/checkpoint_*")), list(sweep_dirs[0].iterdir())
    assert str(local_cluster.storage) in sweep["result"].stdout  # "Ray results: ..."


def test_no_secret_in_outputs_logs_argv_or_mlflow(
    sweep: dict[str, Any], local_cluster: Any
) -> None:
    """Neither the Ray token nor the database password shows in what a user or `ps` sees."""
    secrets = {"the Ray token": local_cluster.token}
    if local_cluster.postgres is not None:
        password = local_cluster.postgres.password
        secrets.update(
            {"the database password": password, "its URL form": quote(password, safe="")}
        )
    outputs = {
        "caviar's output": sweep["result"].stdout + sweep["result"].stderr,
        **{f"{name}.log": local_cluster.log(name, tail=10**7) for name in local_cluster.processes},
        **{f"the argv of process {pid}": argv for pid, argv in command_lines().items()},
    }
    for run in [*sweep["parents"], *sweep["children"]]:
        values = [*run.data.params.values(), *run.data.tags.values()]
        outputs[f"run {run.info.run_id}'s params and tags"] = "\n".join(values)
    leaks = [
        f"{secret} in {where}"
        for secret, value in secrets.items()
        for where, text in outputs.items()
        if value in text
    ]
    assert not leaks


def command_lines() -> dict[int, str]:
    """Every process's argv, as ``ps`` shows it to any user of the machine."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            found[int(entry.name)] = argv.replace(b"\0", b" ").decode(errors="replace")
    return found


def test_status_logs_and_jobs_describe_the_job(sweep: dict[str, Any], local_cluster: Any) -> None:
    job, folder = sweep["job"], sweep["folder"]
    status = caviar(local_cluster, "status", job, cwd=folder)
    assert status.returncode == 0, status.stderr
    assert f"job {job}: SUCCEEDED" in status.stdout and "caviar run sweep.yaml" in status.stdout
    logs = caviar(local_cluster, "logs", job, cwd=folder)
    assert logs.returncode == 0 and "Sweep cluster-sweep" in logs.stdout
    followed = caviar(local_cluster, "logs", job, "--follow", cwd=folder)
    assert followed.returncode == 0, followed.stderr
    assert "Sweep cluster-sweep" in followed.stdout and f"job {job} SUCCEEDED" in followed.stdout
    listed = caviar(local_cluster, "jobs", cwd=folder)
    assert listed.returncode == 0
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(job)]
    assert "SUCCEEDED" in row and "sweep.yaml" in row


def test_unknown_job_id_is_a_clear_error(sweep: dict[str, Any], local_cluster: Any) -> None:
    for command in ("status", "logs", "stop"):
        result = caviar(local_cluster, command, "caviar-nope-000000", cwd=sweep["folder"])
        assert result.returncode == 1, command
        assert "no job 'caviar-nope-000000'" in result.stderr and "caviar jobs" in result.stderr
        assert "Traceback" not in result.stderr


def test_missing_or_wrong_token_is_named(sweep: dict[str, Any], local_cluster: Any) -> None:
    missing = caviar(local_cluster, "jobs", cwd=sweep["folder"], token="")
    assert missing.returncode == 1
    assert "requires a token and none was sent" in missing.stderr
    wrong = caviar(local_cluster, "submit", "sweep.yaml", cwd=sweep["folder"], token="not-it")
    assert wrong.returncode == 1
    assert "refused the token from RAY_AUTH_TOKEN" in wrong.stderr
    assert "not-it" not in wrong.stderr
    for result in (missing, wrong):
        assert "Traceback" not in result.stderr


def test_a_cluster_without_caviar_is_diagnosed(sweep: dict[str, Any], local_cluster: Any) -> None:
    """A job whose nodes cannot find caviar (PATH without it) fails, and status says why."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(
        local_cluster.address, headers={"Authorization": f"Bearer {local_cluster.token}"}
    )
    job = client.submit_job(
        entrypoint="caviar run sweep.yaml", runtime_env={"env_vars": {"PATH": "/usr/bin:/bin"}}
    )
    deadline = time.monotonic() + 60
    while client.get_job_status(job) not in ("FAILED", "SUCCEEDED", "STOPPED"):
        assert time.monotonic() < deadline, "the job never ended"
        time.sleep(0.5)
    status = caviar(local_cluster, "status", job, cwd=sweep["folder"])
    assert status.returncode == 0, status.stderr
    assert "FAILED" in status.stdout and "no caviar installed" in status.stdout


def test_stop_ends_a_running_job(sweep: dict[str, Any], local_cluster: Any) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    folder = sweep["folder"]
    (folder / "long.yaml").write_text(
        SPEC.replace("cluster-sweep", "cluster-long").replace("max_epochs: 8", "max_epochs: 500")
    )
    submitted = caviar(local_cluster, "submit", "long.yaml", cwd=folder)
    assert submitted.returncode == 0, submitted.stderr
    job = re.search(r"submitted job (\S+)", submitted.stdout)
    assert job and "follow:" in submitted.stdout
    client = JobSubmissionClient(
        local_cluster.address, headers={"Authorization": f"Bearer {local_cluster.token}"}
    )
    deadline = time.monotonic() + 120
    while client.get_job_status(job.group(1)) == JobStatus.PENDING:  # its driver not yet up
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.5)
    assert client.get_job_status(job.group(1)) == JobStatus.RUNNING
    stopped = caviar(local_cluster, "stop", job.group(1), cwd=folder)
    assert stopped.returncode == 0, stopped.stderr
    assert f"job {job.group(1)}: STOPPED" in stopped.stdout
    assert client.get_job_status(job.group(1)) == JobStatus.STOPPED
