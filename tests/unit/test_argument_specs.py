"""Every role's defaults and its argument spec name the same variables (prometheus.prometheus's
lint_arguments_spec.sh, as a test): a default without a spec entry is undocumented and
unchecked; a spec entry without a default is documented but has no value."""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = sorted(p.parent.parent for p in REPO.glob("roles/*/meta/main.yml"))


def load(path):
    return yaml.safe_load(path.read_text()) or {}


def test_roles_are_found():
    assert {r.name for r in ROLES} >= {
        "tradingbot",
        "tradingbot_service_user",
        "tradingbot_venv",
        "tradingbot_service",
        "tradingbot_backup",
        "tradingbot_logrotate",
        "tradingbot_restore",
        "tradingbot_recovery_drill",
        "tradingbot_rollout",
    }


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_main_spec_names_exactly_the_defaults(role):
    defaults = load(role / "defaults" / "main.yml")
    spec = load(role / "meta" / "argument_specs.yml")["argument_specs"]["main"].get("options") or {}
    assert sorted(defaults) == sorted(spec)


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_spec_defaults_equal_the_defaults(role):
    defaults = load(role / "defaults" / "main.yml")
    for entry_point in load(role / "meta" / "argument_specs.yml")["argument_specs"].values():
        for name, option in (entry_point.get("options") or {}).items():
            assert name in defaults, f"{name} has no default"
            assert option.get("default") == defaults[name], name


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_role_inputs_carry_the_role_prefix(role):
    # The shared role defines the collection-wide tradingbot_* facts; the others their own.
    prefix = "tradingbot_" if role.name == "tradingbot" else f"{role.name}_"
    assert all(name.startswith(prefix) for name in load(role / "defaults" / "main.yml"))


SECRET = ("password", "passphrase", "secret_access_key", "identity")


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_secret_options_are_no_log(role):
    # ansible-core hides a no_log option's value in the spec validation's result (and -vvv).
    for entry_point in load(role / "meta" / "argument_specs.yml")["argument_specs"].values():
        for name, option in (entry_point.get("options") or {}).items():
            if name.endswith(SECRET):
                assert option.get("no_log") is True, f"{name} is a secret: no_log: true"
