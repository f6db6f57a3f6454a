"""Each container gets every setting it needs from the manifests, and nothing it ignores.

For each service and the web client, in each overlay, the environment its container would
see (literal values, the ConfigMaps it loads, its Secrets: dev's generated values, a strong
stand-in for prod's provided ones) is handed to the code's own settings class. A setting
without a default, or whose default only makes sense on one machine (a loopback address), must
be set; a variable nobody reads is a misspelling; and the settings must load, production's
refusals included.
"""

from __future__ import annotations

import base64
import importlib
import secrets
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from .manifests import ROOT, WORKLOADS, Overlay, render, unhashed

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def settings_class(workload: str) -> type[BaseSettings]:
    """The settings class a workload's package defines in its ``settings`` module."""
    if not (ROOT / workload / "pyproject.toml").exists():
        pytest.skip(f"{workload}/ is not in the workspace yet")
    found = list((ROOT / workload / "src").glob("*/settings.py"))
    assert len(found) == 1, f"{workload}: its settings class belongs in src/<package>/settings.py"
    (module_file,) = found
    module = importlib.import_module(f"{module_file.parent.name}.settings")
    (cls,) = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, BaseSettings)
        and value.__module__ == module.__name__
    ]
    return cls


def variable_names(cls: type[BaseSettings]) -> dict[str, str]:
    """Environment variable -> field, as pydantic-settings reads them (no prefix, any case)."""
    names = {}
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        names[(alias or field_name).upper()] = field_name
    return names


def stand_in(secret: str, key: str) -> str:
    """A value for a Secret the operator provides in prod: strong, and shaped like the real one."""
    if key == "DATABASE_URL":
        service = secret.removesuffix("-db-secret")
        return (
            f"postgresql+asyncpg://{service}:{secrets.token_hex(24)}@{service}-postgres/{service}"
        )
    if key == "STRIPE_KEY":
        return "sk_live_" + secrets.token_hex(24)
    return secrets.token_hex(32)


def container_environment(overlay: Overlay, container: dict[str, Any]) -> dict[str, str]:
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in overlay.documents}

    def secret_value(name: str, key: str) -> str:
        secret = by_name.get(("Secret", name))
        if secret is None:
            return stand_in(unhashed(name), key)
        return base64.b64decode(secret["data"][key]).decode()

    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        environment |= by_name[("ConfigMap", source["configMapRef"]["name"])]["data"]
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            environment[variable["name"]] = variable["value"]
        elif not ref.get("optional"):
            environment[variable["name"]] = secret_value(ref["name"], ref["key"])
    return environment


def environment_of(overlay: Overlay, workload: str) -> dict[str, str]:
    template = overlay.find("Deployment", workload)["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return container_environment(overlay, container)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_every_setting_without_a_safe_default_is_set(overlay: Overlay, workload: str) -> None:
    cls = settings_class(workload)
    environment = environment_of(overlay, workload)
    for variable, field_name in variable_names(cls).items():
        field = cls.model_fields[field_name]
        default = "" if field.is_required() else str(field.get_default(call_default_factory=True))
        if field.is_required() or any(host in default for host in LOOPBACK):
            assert variable in environment, f"{workload} needs {variable} in {overlay.name}"


@pytest.mark.parametrize("workload", WORKLOADS)
def test_every_variable_a_container_is_given_is_read(overlay: Overlay, workload: str) -> None:
    read = variable_names(settings_class(workload)).keys()
    template = overlay.find("Deployment", workload)["spec"]["template"]
    (container,) = template["spec"]["containers"]
    # The shared ConfigMap is read by all, each taking what it needs: checked as a whole below.
    given = {v["name"] for v in container.get("env", [])}
    assert given - read == set(), f"{workload} ignores these in {overlay.name}"


def test_every_shared_setting_is_read_by_someone(overlay: Overlay) -> None:
    shared = overlay.find("ConfigMap", "ticketing-config")["data"].keys()
    read: set[str] = set()
    for workload in WORKLOADS:
        if (ROOT / workload / "pyproject.toml").exists():
            read |= variable_names(settings_class(workload)).keys()
    assert shared - read == set()


@pytest.mark.parametrize("workload", WORKLOADS)
def test_the_settings_load_from_what_the_manifests_give(
    overlay: Overlay, workload: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = settings_class(workload)
    for variable in variable_names(cls):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment_of(overlay, workload).items():
        monkeypatch.setenv(variable, value)
    settings = cls()
    expected = "production" if overlay.name == "prod" else "development"
    assert getattr(settings, "environment", expected) == expected


def test_production_refuses_to_start_with_the_dev_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    # An operator who deploys prod's settings with dev's Secrets gets services that refuse.
    dev, prod = render("dev"), render("prod")
    cls = settings_class("auth")
    for variable in variable_names(cls):
        monkeypatch.delenv(variable, raising=False)
    environment = environment_of(dev, "auth") | prod.find("ConfigMap", "ticketing-config")["data"]
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match="JWT_KEY"):
        cls()


def test_the_workloads_checked_here_are_the_deployments(overlay: Overlay) -> None:
    deployed = {d["metadata"]["name"] for d in overlay.all("Deployment")}
    assert deployed == set(WORKLOADS)
