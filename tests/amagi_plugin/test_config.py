from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from amagi_plugin.config import ConfigError, Destination, keys, load_config, template


def test_defaults_work_without_a_file(tmp_path: Path) -> None:
    cfg = load_config(environ={}, cwd=tmp_path)
    assert cfg.listener.ae_title == "AMAGI"
    assert cfg.listener.port == 11112
    assert cfg.var_dir == tmp_path / "var"
    assert cfg.spool_dir == tmp_path / "var" / "spool"
    assert cfg.database_url == f"sqlite:///{tmp_path / 'var' / 'amagi.db'}"
    assert cfg.model.name == "demo"
    assert set(cfg.sources.values()) == {"default"}


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    f = tmp_path / "amagi.toml"
    f.write_text('[listener]\nport = 2000\nae_title = "FROMFILE"\n[worker]\ncount = 3\n')
    env = {"AMAGI_LISTENER_PORT": "3000", "AMAGI_WORKER_COUNT": "4"}
    cfg = load_config(f, environ=env, overrides={"listener.port": "4000"}, cwd=tmp_path)
    assert cfg.listener.port == 4000 and cfg.sources["listener.port"] == "command line"
    assert cfg.worker.count == 4 and cfg.sources["worker.count"] == "env AMAGI_WORKER_COUNT"
    assert cfg.listener.ae_title == "FROMFILE"
    assert cfg.sources["listener.ae_title"] == f"file {f}"


def test_config_file_from_environment(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[storage]\nreserve_mb = 5\n")
    cfg = load_config(environ={"AMAGI_CONFIG": str(f)}, cwd=tmp_path)
    assert cfg.storage.reserve_mb == 5 and cfg.file == f


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"overrides": {"listener.port": "abc"}}, "listener.port (command line): 'abc': expected an integer"),
        ({"environ": {"AMAGI_LISTENER_PORT": "70000"}}, "listener.port (env AMAGI_LISTENER_PORT)"),
        ({"overrides": {"listener.ae_title": "WAY_TOO_LONG_AE_TITLE"}}, "listener.ae_title"),
        ({"overrides": {"analysis.smoothing": "gaussian"}}, "must be one of morphology, median"),
        ({"overrides": {"analysis.threshold": "1.5"}}, "analysis.threshold (command line): '1.5': must lie between 0 and 1"),
        ({"environ": {"AMAGI_ANALYSIS_THRESHOLD": "1"}}, "must lie between 0 and 1"),
        ({"overrides": {"listener.tls": "maybe"}}, "expected true or false"),
        ({"overrides": {"listner.port": "1"}}, "did you mean 'listener.port'"),
        ({"overrides": {"delivery.destinations": "PACS@host"}}, "is not AE_TITLE@HOST:PORT"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, source, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(environ=source.get("environ", {}), overrides=source.get("overrides"), cwd=tmp_path)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[listener\nport = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML"):
        load_config(bad, environ={}, cwd=tmp_path)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[listener]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"unknown configuration key 'listener.prot'; did you mean 'listener.port'"):
        load_config(unknown, environ={}, cwd=tmp_path)
    typed = tmp_path / "typed.toml"
    typed.write_text('[worker]\ncount = "two"\n')
    with pytest.raises(ConfigError, match=r"worker.count \(file .*typed.toml\)"):
        load_config(typed, environ={}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.toml", environ={}, cwd=tmp_path)


def test_destinations_from_flag_and_file_tables(tmp_path: Path) -> None:
    cfg = load_config(environ={}, overrides={"delivery.destinations": "PACS@10.0.0.5:104,ARCH@[::1]:11112"},
                      cwd=tmp_path)
    assert cfg.delivery.destinations == [Destination("PACS", "10.0.0.5", 104), Destination("ARCH", "::1", 11112)]
    f = tmp_path / "d.toml"
    f.write_text('[[delivery.destinations]]\nae_title = "PACS"\nhost = "pacs"\nport = 2762\ntls = true\n'
                 'tls_ca = "/ca.pem"\n')
    cfg = load_config(f, environ={}, cwd=tmp_path)
    assert cfg.delivery.destinations == [Destination("PACS", "pacs", 2762, tls=True,
                                                     tls_ca=Path("/ca.pem"))]


def test_paths_in_a_file_are_anchored_at_its_directory(tmp_path: Path) -> None:
    """A relative path in the configuration file means the same wherever the command runs:
    it is resolved once, at load, against the file's directory; one from a flag or the
    environment against the working directory. Every path comes out absolute and typed."""
    etc, elsewhere = tmp_path / "etc" / "amagi", tmp_path / "run"
    etc.mkdir(parents=True)
    elsewhere.mkdir()
    f = etc / "amagi.toml"
    f.write_text('[storage]\nvar_dir = "data"\n'
                 '[database]\nurl = "sqlite:///db/amagi.db?timeout=5"\n'
                 '[model]\nname = "amagi_tiny"\ncheckpoint = "weights/x.pth"\n'
                 '[listener]\ntls_cert = "tls/cert.pem"\ntls_key = "/abs/key.pem"\n'
                 '[logging]\nfile = "../log/amagi.log"\n'
                 '[[delivery.destinations]]\nae_title = "PACS"\nhost = "pacs"\nport = 104\n'
                 'tls = true\ntls_ca = "ca.pem"\n'
                 '[[delivery.destinations]]\nurl = "https://pacs/dicom-web"\n'
                 'tls_cert = "web/c.pem"\ntls_key = "web/k.pem"\n')
    cfg = load_config(f, environ={"AMAGI_LISTENER_TLS_CA": "env-ca.pem"},
                      overrides={"storage.results_dir": "out"}, cwd=elsewhere)
    assert cfg.var_dir == etc / "data" and cfg.spool_dir == etc / "data" / "spool"
    assert cfg.database_url == f"sqlite:///{etc / 'db' / 'amagi.db'}?timeout=5"
    assert cfg.model.checkpoint == etc / "weights" / "x.pth"
    assert cfg.listener.tls_cert == etc / "tls" / "cert.pem"
    assert cfg.listener.tls_key == Path("/abs/key.pem")
    assert cfg.logging.file == tmp_path / "etc" / "log" / "amagi.log"
    dimse, web = cfg.delivery.destinations
    assert dimse.tls_ca == etc / "ca.pem"
    assert (web.tls_cert, web.tls_key) == (etc / "web" / "c.pem", etc / "web" / "k.pem")
    # from the environment and the command line: the working directory
    assert cfg.listener.tls_ca == elsewhere / "env-ca.pem"
    assert cfg.results_dir == elsewhere / "out"
    # unset paths stay unset
    bare = load_config(environ={"AMAGI_DATABASE_URL": "sqlite:///x.db"}, cwd=elsewhere)
    assert bare.database_url == f"sqlite:///{elsewhere / 'x.db'}"
    assert bare.var_dir == elsewhere / "var"
    assert bare.model.checkpoint is None and bare.listener.tls_cert is None
    assert bare.logging.file is None


def test_a_checkpoint_flag_is_anchored_at_the_working_directory(tmp_path: Path) -> None:
    f = tmp_path / "conf" / "amagi.toml"
    f.parent.mkdir()
    f.write_text('[model]\ncheckpoint = "in-file.pth"\n')
    cfg = load_config(f, environ={}, overrides={"model.checkpoint": "flag.pth"}, cwd=tmp_path)
    assert cfg.model.checkpoint == tmp_path / "flag.pth"
    assert load_config(f, environ={}, cwd=tmp_path).model.checkpoint == f.parent / "in-file.pth"


def test_template_is_valid_toml_listing_every_key(tmp_path: Path) -> None:
    text = template()
    body, _, example = text.partition("# Destinations may also be tables")
    for key in keys():
        assert f"# {key.name} = " in body and key.env in body and key.flag in body
    # Uncommenting every default gives a file that loads to exactly the defaults.
    uncommented = re.sub(r"^# (\w+ = )", r"\1", body, flags=re.M)
    f = tmp_path / "t.toml"
    f.write_text(uncommented)
    from_file = load_config(f, environ={}, cwd=tmp_path)
    defaults = load_config(environ={}, cwd=tmp_path)
    assert all(src.startswith("file ") for src in from_file.sources.values())
    for key in keys():
        assert from_file.get(key.dotted) == defaults.get(key.dotted), key.dotted
    # The commented example of a destination table is valid too.
    example_toml = re.sub(r"^# ?", "", example.split("\n", 1)[1], flags=re.M)
    f.write_text(example_toml)
    example_cfg = load_config(f, environ={}, cwd=tmp_path)
    assert example_cfg.delivery.destinations[0].tls is True
    assert example_cfg.poll.sources[0].token_env == "AMAGI_ARCHIVE_TOKEN"


def test_cli_config_show_reports_sources(run_cli, tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text("[listener]\nport = 5000\n")
    r = run_cli("config", "show", "--config", str(f), "--format", "json", "--worker-count", "2",
                env={"AMAGI_LISTENER_AE_TITLE": "ENVAE"})
    assert r.code == 0, r.stderr
    values = {row["key"]: row for row in json.loads(r.stdout)["values"]}
    assert values["listener.port"] == {"key": "listener.port", "value": "5000", "source": f"file {f}"}
    assert values["listener.ae_title"]["source"] == "env AMAGI_LISTENER_AE_TITLE"
    assert values["worker.count"] == {"key": "worker.count", "value": "2", "source": "command line"}
    assert values["database.url"]["value"].startswith("sqlite:///")
    table = run_cli("config", "show", "--set", "model.prediction_hz=5")
    assert table.code == 0
    assert any(ln.split()[:3] == ["model.prediction_hz", "5.0", "command"] for ln in table.stdout.splitlines())


def test_cli_bad_config_value_is_one_line(run_cli) -> None:
    r = run_cli("config", "show", "--listener-port", "abc")
    assert r.code == 2
    assert r.stderr.strip() == "amagi: error: invalid value for listener.port (command line): 'abc': expected an integer"
    r = run_cli("config", "show", env={"AMAGI_WORKER_COUNT": "-1"})
    assert r.code == 2 and "worker.count (env AMAGI_WORKER_COUNT)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_database_password_is_masked(run_cli) -> None:
    r = run_cli("config", "show", "--database-url", "postgresql+psycopg://amagi:s3cret@db:5432/amagi")
    assert "s3cret" not in r.stdout and "amagi:***@db" in r.stdout


def test_dicomweb_destinations_from_flag_and_file(tmp_path: Path) -> None:
    cfg = load_config(environ={}, overrides={
        "delivery.destinations": "PACS@10.0.0.5:104,https://pacs.example.org:8443/dicom-web/"},
        cwd=tmp_path)
    dimse, web = cfg.delivery.destinations
    assert not dimse.is_web and web.is_web
    assert web.key == "https://pacs.example.org:8443/dicom-web" and web.auth == "none"
    f = tmp_path / "d.toml"
    f.write_text('[[delivery.destinations]]\nurl = "https://pacs/dicom-web"\nauth = "basic"\n'
                 'username = "amagi"\npassword_env = "PACS_PW"\ntls_ca = "/ca.pem"\n'
                 'timeout_s = 5\n'
                 '[[delivery.destinations]]\nurl = "http://cloud/dicomweb"\nauth = "bearer"\n'
                 'token_env = "CLOUD_TOKEN"\n')
    basic, bearer = load_config(f, environ={}, cwd=tmp_path).delivery.destinations
    assert (basic.username, basic.secret_env(), basic.tls_ca, basic.timeout_s) == \
        ("amagi", "PACS_PW", Path("/ca.pem"), 5.0)
    assert (bearer.auth, bearer.secret_env()) == ("bearer", "CLOUD_TOKEN")
    assert str(basic) == "https://pacs/dicom-web (STOW-RS, basic auth, CA /ca.pem)"


@pytest.mark.parametrize(("table", "message"), [
    ('url = "https://amagi:secret@pacs/dicom-web"', "credentials do not belong in the URL"),
    ('url = "ftp://pacs/dicom-web"', "is not an http(s):// URL"),
    ('url = "https://pacs/dicom-web?x=1"', "has no query or fragment"),
    ('url = "http://pacs/dicom-web"\ntls_ca = "/ca.pem"', "need an https:// URL"),
    ('url = "https://pacs/dicom-web"\nauth = "basic"\nusername = "a"', "needs username and password_env"),
    ('url = "https://pacs/dicom-web"\nauth = "bearer"', "needs token_env"),
    ('url = "https://pacs/dicom-web"\nauth = "digest"', "auth must be none, basic or bearer"),
    ('url = "https://pacs/dicom-web"\nauth = "bearer"\ntoken_env = "eyJhbGciOi.secret"',
     "names an environment variable"),
    ('url = "https://pacs/dicom-web"\npassword_env = "PW"', "password_env given but auth is 'none'"),
    ('url = "https://pacs/dicom-web"\nae_title = "PACS"', "ae_title: only for a DIMSE destination"),
    ('ae_title = "PACS"\nhost = "h"\nport = 104\ntoken_env = "T"', "token_env: only for a DICOMweb"),
    ('ae_title = "PACS"\nhost = "h"', "missing port"),
])
def test_invalid_dicomweb_destinations_name_the_problem(tmp_path: Path, table: str,
                                                        message: str) -> None:
    f = tmp_path / "d.toml"
    f.write_text(f"[[delivery.destinations]]\n{table}\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, environ={}, cwd=tmp_path)
    assert message in str(e.value) and "delivery.destinations" in str(e.value)
    assert "amagi:secret" not in str(e.value) and "eyJhbGciOi" not in str(e.value)


def test_poll_sources_are_dicomweb_peers_checked_as_destinations(tmp_path) -> None:
    from amagi_plugin.config import load_config

    f = tmp_path / "amagi.toml"
    f.write_text('[[poll.sources]]\nurl = "https://archive.example.org/dicom-web/"\n'
                 'auth = "bearer"\ntoken_env = "AMAGI_ARCHIVE_TOKEN"\ntls_ca = "ca.pem"\n'
                 '[poll]\nrecent_days = 2\n')
    cfg = load_config(f, environ={})
    (source,) = cfg.poll.sources
    assert (source.url, source.auth, source.token_env) == (
        "https://archive.example.org/dicom-web", "bearer", "AMAGI_ARCHIVE_TOKEN")
    assert source.tls_ca == tmp_path / "ca.pem"  # anchored at the file, as a destination's
    assert (cfg.poll.recent_days, cfg.poll.full_every_h, cfg.poll.interval_s) == (2, 24.0, 60.0)
    for env, words in [({"AMAGI_POLL_SOURCES": "PACS@pacs:104"}, "not a DIMSE peer"),
                       ({"AMAGI_POLL_SINCE": "2026-11-01"}, "not a date YYYYMMDD"),
                       ({"AMAGI_POLL_RECENT_DAYS": "-1"}, "must be 0 or more")]:
        with pytest.raises(ConfigError, match=words):
            load_config(None, environ=env)
    # A secret put where the name of its variable belongs is refused and never echoed.
    f.write_text('[[poll.sources]]\nurl = "https://a/dicom-web"\nauth = "bearer"\n'
                 'token_env = "s3cr3t-t0ken!"\n')
    with pytest.raises(ConfigError) as e:
        load_config(f, environ={})
    assert "names an environment variable" in str(e.value) and "s3cr3t" not in str(e.value)
