"""Load the workflow configuration and validate it against the JSON schema, filling defaults."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import yaml

from multimodal.errors import MultimodalError


def schema_path() -> Path:
    """The packaged JSON schema (``config/schema.yaml`` in the repository links to it)."""
    return Path(str(resources.files("multimodal") / "schema" / "config.yaml"))


def validate_config(config: dict, *, source: str = "config") -> dict:
    """Validate ``config`` in place with Snakemake's validator (the Snakefile uses the same), with defaults."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(schema_path()), set_default=True)
    except WorkflowError as exc:
        raise MultimodalError(f"{source}: invalid configuration: {_one_line(str(exc))}") from exc
    return config


def _one_line(message: str) -> str:
    """jsonschema's reason and where it applies (``model.folds``), without the schema it dumps after them."""
    lines = message.splitlines()
    reason = next((ln.split("ValidationError:", 1)[1].strip() for ln in lines if "ValidationError:" in ln), "")
    where = next((ln.strip() for ln in lines if ln.startswith("On instance")), "")
    keys = re.findall(r"\['([^']*)'\]", where)
    if not reason:
        return " ".join(message.split())[:300]
    return f"{'.'.join(keys)}: {reason}" if keys else reason


def load_config(path: str | Path) -> dict:
    """Read a YAML config file and validate it (defaults filled)."""
    path = Path(path)
    if not path.is_file():
        raise MultimodalError(f"{path}: config file not found")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MultimodalError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(config, dict):
        raise MultimodalError(f"{path}: expected a mapping at the top level")
    return validate_config(config, source=str(path))
