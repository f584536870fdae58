"""``fastfog schema config|acl``: JSON Schemas made from the loaders' own key tables, checked with
jsonschema against the files the loaders accept and refuse."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from fastfog import acl, config

ROOT = Path(__file__).resolve().parents[2]


def schema(kind):
    result = subprocess.run([sys.executable, "-m", "fastfog", "schema", kind], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(document)
    return document


def test_the_config_schema_has_every_key_the_loader_knows():
    document = schema("config")
    assert set(document["properties"]) == set(config.KEYS_BY_YAML)
    configmap = next(d for d in yaml.safe_load_all((ROOT / "deploy/kubernetes/configmap.yaml").read_text())
                     if d["kind"] == "ConfigMap")
    jsonschema.validate(yaml.safe_load(configmap["data"]["config.yaml"]), document)
    jsonschema.validate({"port": 4750, "connect_timeout": "1m30s", "tls": {"cert_file": "/c.pem"},
                         "dns_cache": {"max_entries": 10, "max_ttl": "5m"}}, document)


@pytest.mark.parametrize("bad", [{"listen_port": 1}, {"port": 70000}, {"connect_timeout": "10"},
                                 {"tls": {"certfile": "x"}}, {"network": "tcp"}])
def test_the_config_schema_refuses_what_the_loader_refuses(bad, tmp_path):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema("config"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(config.ConfigError):
        config.load_config(str(path))


def test_the_acl_schema_follows_the_loader():
    document = schema("acl")
    assert tuple(document["properties"]) == acl.TOP_LEVEL_KEYS
    configmap = next(d for d in yaml.safe_load_all((ROOT / "deploy/kubernetes/configmap.yaml").read_text())
                     if d["kind"] == "ConfigMap")
    jsonschema.validate(yaml.safe_load(configmap["data"]["acl.yaml"]), document)
    typo = {"version": "v1", "services": [{"name": "a", "action": "open", "alowed_domains": ["a.com"]}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, document)
    with pytest.raises(acl.AclError):
        acl.parse_acl(typo)
