"""The one credential scrubber both entry points use (``grounding.credentials``)."""

from __future__ import annotations

from grounding.credentials import scrub, scrub_tree, strip_userinfo


def test_userinfo_environment_and_profile_keys_are_removed(tmp_path, monkeypatch):
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = AKIAPROFILEKEY1\naws_secret_access_key = prof/secret+value\n"
                     "[lab]\naws_secret_access_key = lab-profile-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "missing"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-123")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "mlflow-pw-456")
    text = ("tracking http://alice:pa55@mlflow.lab:5000/ s3://KEY:SEC@bucket/x env-secret-123 AKIAPROFILEKEY1 "
            "prof/secret+value lab-profile-secret mlflow-pw-456 https://token@host/p")
    out = scrub(text)
    for s in ("alice", "pa55", "KEY:SEC", "env-secret-123", "AKIAPROFILEKEY1", "prof/secret+value",
              "lab-profile-secret", "mlflow-pw-456", "token@"):
        assert s not in out, (s, out)
    assert "http://***@mlflow.lab:5000/" in out and "s3://***@bucket/x" in out
    assert scrub("s3://bucket/plain and sqlite:////tmp/mlflow.db") == "s3://bucket/plain and sqlite:////tmp/mlflow.db"


def test_scrub_tree_and_strip_userinfo(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok-tok-tok")
    tree = {"argv": ["mlflow.tracking_uri=http://u:p@h:1", "x=tok-tok-tok"], "n": 3, "nested": {"k": ("tok-tok-tok",)}}
    assert scrub_tree(tree) == {"argv": ["mlflow.tracking_uri=http://***@h:1", "x=***"], "n": 3,
                                "nested": {"k": ("***",)}}
    assert strip_userinfo("http://al%40ice:p%3Aw@h:5000/x") == ("http://h:5000/x", "al@ice", "p:w")
    assert strip_userinfo("http://h:5000") == ("http://h:5000", None, None)


def test_the_data_cli_uses_the_shared_scrubber():
    from grounding import credentials
    from grounding.data import cli

    assert cli.scrub is credentials.scrub


def test_scrubbed_stream_scrubs_what_is_written(monkeypatch):
    import io

    from grounding.credentials import ScrubbedStream

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "stream-secret-1")
    buf = io.StringIO()
    s = ScrubbedStream(buf)
    s.write("a stream-secret-1 b http://u:p@h/\n")
    s.writelines(["stream-secret-1\n"])
    s.flush()
    assert buf.getvalue() == "a *** b http://***@h/\n***\n"
