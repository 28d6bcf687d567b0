"""The worker is built by a factory, in-process, with no import-time side effects; the Faust members
it patches still exist in the installed faust-streaming."""

from __future__ import annotations

import json
import subprocess
import sys

from faust.transport.drivers import aiokafka as faust_aiokafka

from genealogy.settings import Settings
from genealogy.streams import faust_patches
from genealogy.streams.app import Activity, Worker, create_app

MODULES = ["genealogy", "genealogy.cli", "genealogy.service", "genealogy.stack", "genealogy.client",
           "genealogy.streams.app", "genealogy.streams.faust_patches", "genealogy.sinks.kafka_sink",
           "genealogy.sinks.reprocess", "genealogy.producers.ingest", "genealogy.producers.spool",
           "genealogy.domain.derive", "genealogy.schemas"]


def test_importing_the_package_has_no_side_effects(tmp_path):
    """No warning, no file or directory created, nothing patched, wherever the settings point."""
    code = ("import importlib, sys\n"
            "from faust.transport.drivers import aiokafka as d\n"
            "before = (d.Consumer.highwaters, d.AIOKafkaConsumerThread._create_worker_consumer)\n"
            f"for m in {MODULES!r}: importlib.import_module(m)\n"
            "assert (d.Consumer.highwaters, d.AIOKafkaConsumerThread._create_worker_consumer) == before, 'patched'\n")
    run = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"GENEALOGY_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_patched_faust_members_still_exist():
    for cls, name in faust_patches.PATCHED:
        assert callable(getattr(cls, name, None)), f"{cls.__qualname__}.{name} is gone: check streams/faust_patches.py"


def test_create_app_builds_a_worker_in_process(tmp_path):
    settings = Settings(data_dir=tmp_path, broker_port=1, tansu_broker=True, grace_ms=1234)
    app = create_app(settings)
    worker = app.genealogy_worker
    assert isinstance(worker, Worker) and worker.settings is settings
    assert [agent.name for agent in app.agents.values()] == ["genealogy.derive_edges"]
    assert worker.capture_topic.get_topic_name() == settings.topic_capture
    assert "station-join" in app.tables
    assert app.conf.broker_heartbeat_interval == settings.worker_heartbeat_s == 0.3
    # The patches are installed by the factory, for these settings (Tansu: highwaters read from the log).
    assert faust_aiokafka.Consumer.highwaters is not faust_patches._ORIGINAL[(faust_aiokafka.Consumer, "highwaters")]
    assert (tmp_path / "faust").is_dir()

    # A second app with another broker gets its own settings, and no Tansu patch.
    create_app(Settings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:1"))
    assert faust_aiokafka.Consumer.highwaters is faust_patches._ORIGINAL[(faust_aiokafka.Consumer, "highwaters")]


def test_the_ready_file_reports_progress_and_state(tmp_path):
    worker = create_app(Settings(data_dir=tmp_path, broker_port=1)).genealogy_worker
    worker.activity["ST-1"] = Activity(seen=0.0, max_ms=5, pending=3, partition=2)
    worker.progress.start(2, 7)
    worker.write_ready_file()
    report = json.loads(worker.ready_file.read_text())
    assert report["handled"] == {"2": 7}
    assert report["state"]["stations"] == 1 and report["state"]["pending_completions"] == 3
    worker.on_before_shutdown(None)
    assert not worker.ready_file.exists()
