"""The embedded default refreshes the library without Redis: the same plain functions, on a thread."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from services.curation.imports import BoardImportJobs
from services.workers.embedded import EmbeddedLibrary, library_runner, wait_for
from shared.settings import load_settings
from shared.store import look_id_for, open_store

pytestmark = pytest.mark.integration


def test_embedded_refresh_runs_in_process_and_is_idempotent(
    tmp_path: Path, team_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for path in sorted((team_data / "looks" / "images").glob("*.jpg"))[20:23]:
        shutil.copy(path, source / path.name)
    (source / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # A JPEG that ends inside its header: Pillow fails it in Image.open, before decoding.
    (source / "cut.jpg").write_bytes(next(source.glob("0*.jpg")).read_bytes()[:200])
    settings = load_settings(data_dir=tmp_path / "data", torch_threads=2)
    store = open_store(settings)
    with caplog.at_level(logging.INFO, logger="services.workers.embedded"):
        runner = library_runner(settings, store=store)
    assert isinstance(runner, EmbeddedLibrary)
    assert "library tasks run in-process (embedded mode, no Redis)" in caplog.text
    try:
        first = runner.run(str(source))
        assert (first.state, first.total, first.done, first.quarantined) == ("succeeded", 5, 3, 2)
        assert store.count() == 3
        bad = {"broken.jpg", "cut.jpg"}
        expected = {look_id_for(p.read_bytes()) for p in source.iterdir() if p.name not in bad}
        assert store.existing_ids(sorted(expected)) == expected
        quarantined = {Path(q.path).name: q.reason for q in runner.jobs.quarantined()}
        assert set(quarantined) == bad and "corrupt or truncated" in quarantined["cut.jpg"]

        # The console's view of imports: a background job, watched until done.
        imports = BoardImportJobs(runner.jobs, runner.launch, check_source=runner.check_source)
        view = imports.start(str(source), requested_by="editor")
        done = wait_for(runner.jobs, view.job_id, poll_s=0.1)
        assert (done.total, done.skipped) == (2, 3)  # only the quarantined files are tried again
        again = imports.get(view.job_id)
        assert again is not None and again.state == "succeeded"
        assert store.count() == 3
    finally:
        runner.close()
        store.close()
