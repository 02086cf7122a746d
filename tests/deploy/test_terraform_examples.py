"""Static checks of ``deploy/terraform``: every configuration parses (python-hcl2), is
``terraform fmt``-clean, declares what it uses, and wires the region module correctly.

The cloud examples cannot be applied here (no cloud credentials); these checks are what
catches a broken variable, output or module call in them.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
import pytest

from .conftest import ROOT

TERRAFORM = ROOT / "deploy" / "terraform"
MODULE = TERRAFORM / "modules" / "region"
LOCAL = TERRAFORM / "examples" / "local"
AWS = TERRAFORM / "examples" / "aws"
AWS_REGION = AWS / "gpu_region"
GCP = TERRAFORM / "examples" / "gcp"
CONFIGS = [MODULE, LOCAL, AWS, AWS_REGION, GCP]


def _name(key: str) -> str:
    return key.strip('"')


@dataclass
class Config:
    """The blocks of one Terraform directory (all its .tf files merged)."""

    path: Path
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    providers: list[dict[str, Any]] = field(default_factory=list)
    terraform: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""  # every file but variables.tf (whose validations name their own variable)

    @property
    def required_variables(self) -> set[str]:
        return {n for n, body in self.variables.items() if "default" not in body}

    def referenced(self, kind: str) -> set[str]:
        return set(re.findall(rf"\b{kind}\.([A-Za-z_][A-Za-z0-9_]*)", self.text))


def load(path: Path) -> Config:
    config = Config(path)
    for tf in sorted(path.glob("*.tf")):
        if tf.name != "variables.tf":
            config.text += tf.read_text()
        with tf.open() as f:
            parsed = hcl2.load(f)
        assert tf.name == "variables.tf" or "variable" not in parsed, f"{tf}: variables.tf only"
        for block in parsed.get("variable", []):
            config.variables.update({_name(k): v for k, v in block.items()})
        for block in parsed.get("output", []):
            config.outputs.update({_name(k): v for k, v in block.items()})
        for block in parsed.get("locals", []):
            config.locals.update({k: v for k, v in block.items() if not k.startswith("__")})
        for block in parsed.get("module", []):
            config.modules.update({_name(k): v for k, v in block.items()})
        for kind, store in (("resource", config.resources), ("data", config.data)):
            for block in parsed.get(kind, []):
                for rtype, named in block.items():
                    for rname, body in named.items():
                        store[f"{_name(rtype)}.{_name(rname)}"] = body
        for block in parsed.get("provider", []):
            config.providers.extend({"type": _name(k), **v} for k, v in block.items())
        config.terraform.extend(parsed.get("terraform", []))
    return config


def source_dir(config: Config, call: dict[str, Any]) -> Path:
    return (config.path / _name(call["source"])).resolve()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_every_configuration_parses_and_declares_what_it_uses(path: Path) -> None:
    config = load(path)
    assert config.variables and config.outputs, "variables and outputs are declared"
    for name, body in config.variables.items():
        assert _name(body.get("description", "")), f"variable {name} has a description"
    for name, body in config.outputs.items():
        assert _name(body.get("description", "")), f"output {name} has a description"
    assert config.referenced("var") == set(config.variables), "every variable used, none unknown"
    assert config.referenced("local") <= set(config.locals), "every local is defined"
    assert config.terraform, "a terraform block pins the version"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_module_calls_pass_every_required_input_and_nothing_unknown(path: Path) -> None:
    config = load(path)
    meta = {"source", "providers", "for_each", "count", "depends_on", "version", "__is_block__"}
    for name, call in config.modules.items():
        target_dir = source_dir(config, call)
        assert target_dir.is_dir(), f"module {name}: {call['source']} exists"
        target = load(target_dir)
        given = set(call) - meta
        assert target.required_variables <= given, f"module {name} misses inputs"
        assert given <= set(target.variables), f"module {name} passes undeclared inputs"


def test_region_module_contract() -> None:
    module = load(MODULE)
    assert module.required_variables == {
        "name",
        "lat",
        "lon",
        "control_plane_url",
        "credential_file",
    }
    assert {"cloud_provider", "gpu_type", "gpu_count", "meridian_command"} <= set(module.variables)
    assert {"agent_control_plane", "agent_credential_path", "agent_extra_args"} <= set(
        module.variables
    )
    assert "admin_token_file" in module.variables
    assert {"name", "id", "endpoint", "credential_file", "agent_args"} <= set(module.outputs)
    # built-ins only: no provider to download, so it works offline
    assert not any("required_providers" in t for t in module.terraform)
    assert {r.split(".")[0] for r in module.resources} == {"terraform_data"}
    assert not module.data and not module.providers


def _provisioners(body: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for provisioner in body.get("provisioner", []):
        found += [v for k, v in provisioner.items() if _name(k) == "local-exec"]
    return found


@pytest.mark.parametrize("path", [MODULE, LOCAL], ids=["module", "local"])
def test_destroy_provisioners_read_only_self(path: Path) -> None:
    config = load(path)
    destroy = [
        p
        for body in config.resources.values()
        for p in _provisioners(body)
        if _name(str(p.get("when", ""))) in ("destroy", "${destroy}")
    ]
    assert destroy, "something is undone on destroy"
    for provisioner in destroy:
        text = str({k: v for k, v in provisioner.items() if k != "when"})
        assert "self.input" in text
        assert not re.search(r"\b(var|local|module|terraform_data)\.", text), text


def test_region_module_deregisters_on_destroy_and_keeps_the_token_out_of_the_state() -> None:
    module = load(MODULE)
    registration = module.resources["terraform_data.registration"]
    create, destroy = _provisioners(registration)
    assert "apply_command" in create["command"] and "delete_command" in destroy["command"]
    # terraform_data echoes its input unredacted as output: no token may go in there
    assert "token" not in str(registration["input"]).replace("delete_command", "")
    assert "--token " not in module.text and "var.admin_token_file" in module.text
    assert "regions apply" in module.locals["apply_command"]
    assert "regions delete" in module.locals["delete_command"]
    # a field change re-runs apply without replacing the registration
    settings = module.resources["terraform_data.settings"]
    assert "local.fields" in str(settings["triggers_replace"])
    assert "local.fields" not in str(registration["triggers_replace"])


def test_local_example_runs_agents_from_a_configurable_command() -> None:
    local = load(LOCAL)
    assert {"control_plane_url", "admin_token_file", "state_dir", "agent_command"} <= set(
        local.variables
    )
    assert "python" in local.variables and local.required_variables == set()
    assert len(_name(str(local.variables["regions"]["default"]))) > 0
    assert len(local.variables["regions"]["default"]) == 3
    agent = local.resources["terraform_data.agent"]
    start, stop = _provisioners(agent)
    assert "start-agent.sh" in start["command"] and "local.agent_command" in start["command"]
    assert "self.input.stop_script" in stop["command"]
    for script in ("start-agent.sh", "stop-agent.sh"):
        subprocess.run(["sh", "-n", str(LOCAL / "scripts" / script)], check=True)


GUARDED = [(LOCAL, "terraform_data.agent"), (AWS_REGION, "aws_instance.agent")]
GUARDED += [(GCP, "google_compute_instance.agent")]


@pytest.mark.parametrize("path,machine", GUARDED, ids=["local", "aws", "gcp"])
def test_a_region_with_deployments_is_refused_before_its_machine_goes(
    path: Path, machine: str
) -> None:
    config = load(path)
    guard = config.resources["terraform_data.destroy_guard"]
    assert machine in str(guard["depends_on"]), "destroyed before the agent or instance"
    (check,) = _provisioners(guard)
    assert _name(str(check["when"])) == "destroy"
    assert "destroy_check_command" in str(guard["input"])
    assert "--check-only" in load(MODULE).locals["check_command"]


def test_aws_example_runs_a_gpu_instance_per_region() -> None:
    root, region = load(AWS), load(AWS_REGION)
    aliases = {_name(p["alias"]) for p in root.providers if p["type"] == "aws"}
    assert len(aliases) == len(root.modules) == 3
    for name, call in root.modules.items():
        assert source_dir(root, call) == AWS_REGION.resolve()
        assert f"aws.{name}" in str(call["providers"]), f"module {name} gets its own provider"
    assert {"regions"} <= set(root.outputs)
    assert {"name", "id", "instance_id", "public_ip", "endpoint"} <= set(region.outputs)
    defaults = root.variables["instances"]["default"]
    assert all(re.match(r"^(g|p)\d", _name(i["instance_type"])) for i in defaults.values())
    assert {
        "aws_instance.agent",
        "aws_security_group.agent",
        "aws_ssm_parameter.credential",
        "aws_iam_instance_profile.agent",
    } <= set(region.resources)
    assert "cloud-init.yaml.tftpl" in str(region.resources["aws_instance.agent"]["user_data"])
    assert _name(region.resources["aws_ssm_parameter.credential"]["type"]) == "SecureString"
    assert source_dir(region, region.modules["registration"]) == MODULE.resolve()


def test_gcp_example_runs_a_gpu_instance_per_region() -> None:
    gcp = load(GCP)
    assert source_dir(gcp, gcp.modules["region"]) == MODULE.resolve()
    assert len(gcp.variables["regions"]["default"]) == 3
    instance = gcp.resources["google_compute_instance.agent"]
    assert instance["guest_accelerator"], "GPUs are attached"
    scheduling = instance["scheduling"]
    scheduling = scheduling[0] if isinstance(scheduling, list) else scheduling
    assert _name(scheduling["on_host_maintenance"]) == "TERMINATE"
    assert "startup.sh.tftpl" in str(instance["metadata"])
    assert "google_secret_manager_secret_version.credential" in gcp.resources
    assert {"regions"} <= set(gcp.outputs)


TEMPLATES = [
    (AWS_REGION, "cloud-init.yaml.tftpl", "aws_instance.agent"),
    (GCP, "startup.sh.tftpl", "google_compute_instance.agent"),
]


@pytest.mark.parametrize("path,template,resource", TEMPLATES, ids=["aws", "gcp"])
def test_templates_get_exactly_the_values_they_use(
    path: Path, template: str, resource: str
) -> None:
    text = (path / template).read_text()
    used = set(re.findall(r"\$\{([a-z_]+)\}", text))
    body = str(load(path).resources[resource])
    call = body[body.index(template) :]
    passed = set(re.findall(r"\b([a-z_]+) = ", call))
    assert used == passed, (used, passed)
    assert "agent_args" in used and "credential_path" in used
    assert "ExecStart=/opt/meridian/bin/meridian agent ${agent_args}" in text
    assert re.search(r"enable.*--now.*meridian-agent", text), "the agent starts now and at boot"
    # the credential itself never travels in user data or metadata
    assert "admin_token" not in text and "credential.content" not in text


def test_terraform_fmt_is_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, terraform_command: type[Any]
) -> None:
    rc = tmp_path / "terraformrc"
    rc.write_text("")
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(rc))
    monkeypatch.setenv("CHECKPOINT_DISABLE", "1")
    result = terraform_command().fmt(
        dir=str(TERRAFORM), check_input=True, recursive=True, list=True, write=False
    )
    assert result.retcode == 0, f"not terraform fmt-clean:\n{result.value}\n{result.error}"
