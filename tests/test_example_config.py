import tomllib
from pathlib import Path

from mcnotify.config import SCHEMA, parse

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_is_valid_and_mentions_every_key(tmp_path: Path) -> None:
    text = (ROOT / "config.example.toml").read_text()
    raw = tomllib.loads(text)
    # As a unit sees it: every credential the example names is in the unit's $CREDENTIALS_DIRECTORY.
    for name in ("mc_client_secret", "mysql_password", "sftp_key"):
        (tmp_path / name).write_text("x")
        (tmp_path / name).chmod(0o600)
    settings = parse(raw, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert settings.section("sftp")["key_file"] == str(tmp_path / "sftp_key")
    assert settings.templates["envelope-received"].from_name == "{sender_name} via EZTABLE"
    for section, keys in SCHEMA.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"{key} =" in text or f"{key}_file =" in text, f"{section}.{key} missing from the example"
