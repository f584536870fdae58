"""Reading a YAML file whose errors must name the file (config and ACL alike)."""

import yaml


def read_yaml(path, error):
    """The document in ``path``; raises ``error("<path>: <reason>")`` when it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as file:
            return yaml.safe_load(file)
    except OSError as err:
        raise error(f"{path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: invalid YAML: {err}") from None
