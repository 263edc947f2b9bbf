import json

from shared.settings import get_settings, load_settings


def test_environment_wins_over_local_settings(env, tmp_path, monkeypatch):
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"Values": {"MC_PUBLIC_URL": "https://file.example", "MC_FLOW_TTL_SECONDS": "60"}}))
    monkeypatch.setattr("shared.settings.LOCAL_SETTINGS_FILE", path)
    monkeypatch.setenv("MC_PUBLIC_URL", "https://env.example/")
    settings = load_settings()
    assert settings.public_url == "https://env.example"
    assert settings.flow_ttl_seconds == 60
    assert settings.oauth_redirect_uri == "https://env.example/oauth"


def test_azure_markers_are_detected(env, monkeypatch):
    assert get_settings().in_azure is False
    monkeypatch.setenv("WEBSITE_INSTANCE_ID", "abc")
    assert load_settings().in_azure is True
