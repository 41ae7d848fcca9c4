import tomllib
from pathlib import Path

from mcnotify.config import SCHEMA, parse

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_is_valid_and_mentions_every_key(tmp_path: Path) -> None:
    text = (ROOT / "config.example.toml").read_text()
    raw = tomllib.loads(text)
    secret = tmp_path / "secret"
    secret.write_text("x")
    raw["marketing_cloud"]["client_secret_file"] = str(secret)
    settings = parse(raw, environ={})
    assert settings.templates["envelope-received"].from_name == "{sender_name} via EZTABLE"
    for section, keys in SCHEMA.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"{key} =" in text or f"{key}_file =" in text, f"{section}.{key} missing from the example"
