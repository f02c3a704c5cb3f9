"""emdata.config.Settings: read from the environment, scoped per thread with config.using, and
never passed by writing os.environ."""

from __future__ import annotations

import json
import pickle
import re
import threading
from pathlib import Path

import pytest

import emdata
from emdata import config
from emdata.config import Settings
from emdata.sources.errors import OfflineError
from emdata.testing.offline import offline_environment

SRC = Path(emdata.__file__).parent


def test_from_env_parses_each_variable(tmp_path: Path) -> None:
    env = {"EMDATA_HOME": "~/em", "EMDATA_MIRROR": " http://127.0.0.1:8000/ ", "EMDATA_OFFLINE": "TRUE",
           "EMDATA_CHECKSUMS": str(tmp_path / "sums.json"), "EMDATA_QUIET": "1", "EMDATA_MAX_BOX_GB": "0.5"}
    s = Settings.from_env(env)
    assert s == Settings(home=Path("~/em").expanduser(), mirror="http://127.0.0.1:8000", offline=True,
                         checksums=tmp_path / "sums.json", quiet=True, max_box_gb=0.5)
    assert Settings.from_env(s.to_env()) == s
    empty = Settings.from_env({"EMDATA_HOME": "/h", "EMDATA_OFFLINE": "0", "EMDATA_MIRROR": ""})
    assert (empty.mirror, empty.offline, empty.checksums, empty.quiet, empty.max_box_gb) == (None, False, None,
                                                                                              False, None)
    with pytest.raises(ValueError, match=r"^EMDATA_MAX_BOX_GB='-3' is not a positive number of GB"):
        Settings.from_env({"EMDATA_HOME": "/h", "EMDATA_MAX_BOX_GB": "-3"})


def test_environment_is_read_when_nothing_is_scoped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMDATA_HOME", str(tmp_path / "a"))
    assert config.emdata_home() == tmp_path / "a"
    monkeypatch.setenv("EMDATA_OFFLINE", "1")
    assert config.offline() and config.prepared_dir("x") == tmp_path / "a" / "prepared" / "x"


def test_scoped_override_nests_and_restores(tmp_path: Path) -> None:
    before = config.current()
    with config.using(home=tmp_path / "outer", offline=True) as outer:
        with config.using(home=tmp_path / "inner"):
            assert config.emdata_home() == tmp_path / "inner" and config.offline()  # the rest is inherited
        assert config.current() == outer
        with pytest.raises(RuntimeError), config.using(mirror="http://127.0.0.1:1"):
            raise RuntimeError
        assert config.mirror() == before.mirror
    assert config.current() == before


def test_checksums_as_a_mapping_or_a_file(tmp_path: Path) -> None:
    with config.using(checksums={"https://x/a": "SHA256:AB"}):
        assert config.checksum_overrides() == {"https://x/a": "ab"}
    bad = tmp_path / "sums.json"
    bad.write_text(json.dumps(["not", "a", "mapping"]), encoding="utf-8")
    with config.using(checksums=bad), pytest.raises(ValueError, match=rf"EMDATA_CHECKSUMS={re.escape(str(bad))}: "
                                                                      "expected a JSON object"):
        config.checksum_overrides()


def test_two_threads_see_their_own_settings_at_the_same_time(tmp_path: Path) -> None:
    """Each thread points emdata at its own replica mirror and home; both are inside their
    block at once, so settings passed through os.environ would show one thread the other's."""
    both_inside, both_read = threading.Barrier(2, timeout=10), threading.Barrier(2, timeout=10)
    seen: dict[str, tuple[Path, str | None]] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            (tmp_path / name).mkdir()
            with offline_environment(tmp_path / name, tmp_path / name / "home", []) as server:
                both_inside.wait()
                seen[name] = (config.emdata_home(), config.mirror() == server.url)
                both_read.wait()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not errors, errors
    assert seen == {"a": (tmp_path / "a" / "home", True), "b": (tmp_path / "b" / "home", True)}
    assert config.emdata_home() != tmp_path / "a" / "home"


def test_a_new_thread_starts_from_the_environment_and_a_thread_pool_inherits(tmp_path: Path) -> None:
    seen: list[Path] = []
    with config.using(home=tmp_path / "scoped"):
        thread = threading.Thread(target=lambda: seen.append(config.emdata_home()))
        thread.start()
        thread.join()
        with config.thread_pool(2) as pool:
            pooled = {pool.submit(config.emdata_home).result() for _ in range(4)}
    assert seen == [Settings.from_env().home]
    assert pooled == {tmp_path / "scoped"}


VIOLATION = re.compile(r"os\.environ\s*\[[^\]]*\]\s*=|os\.environ\.(update|pop|popitem|setdefault|clear)\b"
                       r"|\bdel\s+os\.environ|\b(putenv|unsetenv)\s*\(")


def test_no_library_code_writes_the_environment() -> None:
    hits = [f"{path.relative_to(SRC.parent)}:{number}: {line.strip()}"
            for path in sorted(SRC.rglob("*.py"))
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if VIOLATION.search(line)]
    assert not hits, "library code writes os.environ (use emdata.config.using):\n" + "\n".join(hits)


def test_human_liver_worker_task_runs_under_the_settings_it_is_passed(tmp_path: Path) -> None:
    """The dask task gets the driver's Settings as an argument: offline, it looks for the
    slice's layout in the range cache under the home it was given, not the environment's."""
    import zarr

    from emdata.datasets.human_liver_em import full

    staging = tmp_path / "staging"
    zarr.open_group(str(staging), mode="w")
    spec = {"region": [[0, 1], [0, 8], [0, 8]], "image_shape": [8, 8], "dtype": "uint8", "band_rows": 8,
            "classes": []}
    (staging / "staging.json").write_text(json.dumps(spec), encoding="utf-8")
    given = Settings(home=tmp_path / "driver-home", offline=True)
    assert pickle.loads(pickle.dumps(given)) == given  # it travels to process workers too
    with pytest.raises(OfflineError, match=re.escape(str(given.home / "range-cache"))):
        full.stage_slice(str(staging), given, 0)
    assert config.current() == Settings.from_env()  # the worker's own settings are left as they were


def test_cli_runs_a_command_under_its_settings_and_leaves_none_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from emdata.cli import app

    monkeypatch.delenv("EMDATA_QUIET")
    result = CliRunner().invoke(app, ["--quiet", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert not config.quiet() and config.current() == Settings.from_env()  # --quiet / --json ended with the command


def test_scheduler_setting_is_checked_and_travels_to_subprocesses() -> None:
    s = Settings.from_env({"EMDATA_HOME": "/h", "EMDATA_SCHEDULER": " Local "})
    assert s.scheduler == "local" and Settings.from_env(s.to_env()) == s
    assert Settings.from_env({"EMDATA_HOME": "/h", "EMDATA_SCHEDULER": "auto"}).scheduler is None
    assert Settings(home=Path("/h"), scheduler="tcp://10.1.2.3:8786").to_env()["EMDATA_SCHEDULER"] == "tcp://10.1.2.3:8786"
    with pytest.raises(ValueError, match=r"scheduler='cluster': expected auto, in-process, local or a dask scheduler"):
        Settings.from_env({"EMDATA_HOME": "/h", "EMDATA_SCHEDULER": "cluster"})
