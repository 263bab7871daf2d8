"""Cleanup (control_plane/services/cleanup.py): deleting jobs and groups with their objects,
and `pixelfleet storage gc` finding what no row references."""

from pathlib import Path

from control_plane.settings import Settings
from tests.conftest import png_bytes
from tests.fakes.api import Api, completed_body, hook, submit_one_dispatch


def test_delete_job_and_group_remove_rows_and_objects(api: Api) -> None:
    job_id, dispatch = submit_one_dispatch(api)
    group_id = api.client.get(f"/api/jobs/{job_id}").json()["group_id"]
    busy = api.client.delete(f"/api/jobs/{job_id}")
    assert busy.status_code == 409 and "cancel them first" in busy.json()["detail"]
    hook(api, dispatch, completed_body(api, dispatch))
    outputs_prefix = f"groups/{group_id}/outputs/{job_id}/"
    assert len(list(api.platform.storage.list(outputs_prefix))) == 3
    assert api.client.delete(f"/api/jobs/{job_id}").status_code == 204
    assert api.client.get(f"/api/jobs/{job_id}").status_code == 404
    assert list(api.platform.storage.list(outputs_prefix)) == []
    assert len(list(api.platform.storage.list(f"groups/{group_id}/inputs/"))) == 6  # uploads stay
    assert api.client.delete(f"/api/groups/{group_id}").status_code == 204
    assert api.client.get(f"/api/groups/{group_id}").status_code == 404
    assert list(api.platform.storage.list(f"groups/{group_id}/")) == []
    assert api.client.delete(f"/api/groups/{group_id}").status_code == 404


def test_storage_gc_finds_only_old_unreferenced_objects(api: Api, settings: Settings) -> None:
    from typer.testing import CliRunner

    from control_plane.cli import app as cli

    group_id = api.group()
    api.upload_ids(group_id, 2)
    storage = api.platform.storage
    storage.put_bytes(
        f"groups/{group_id}/outputs/job_gone/out_x.png", png_bytes(), content_type="image/png"
    )
    crashed_write = Path(settings.storage_url) / "groups" / group_id / "inputs" / ".tmp-k3j2h1"
    crashed_write.write_bytes(b"half an image")  # what a process killed mid-write leaves
    env = {
        "PIXELFLEET_DATABASE_URL": settings.database_url,
        "PIXELFLEET_STORAGE_URL": settings.storage_url,
    }
    runner = CliRunner()
    young = runner.invoke(cli, ["storage", "gc"], env=env)
    assert (
        young.exit_code == 0 and "0 orphaned object(s)" in young.output
    )  # within the grace period
    dry = runner.invoke(cli, ["storage", "gc", "--grace-hours", "0"], env=env)
    assert dry.exit_code == 0 and "2 orphaned object(s)" in dry.output and "out_x.png" in dry.output
    assert ".tmp-k3j2h1" in dry.output
    assert storage.exists(
        f"groups/{group_id}/outputs/job_gone/out_x.png"
    )  # dry run deletes nothing
    wet = runner.invoke(cli, ["storage", "gc", "--grace-hours", "0", "--delete"], env=env)
    assert wet.exit_code == 0 and "deleted" in wet.output
    assert not storage.exists(f"groups/{group_id}/outputs/job_gone/out_x.png")
    assert not crashed_write.exists()
    assert len(list(storage.list(f"groups/{group_id}/inputs/"))) == 4  # referenced objects stay
