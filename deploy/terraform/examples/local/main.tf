# Several Meridian regions on this machine: each is registered with the control plane
# (module "region") and gets an agent process with simulated GPUs, started in the
# background with a pid file under the state dir. `terraform destroy` stops the
# agents (by pid file) and then deregisters the regions.

locals {
  state_dir     = abspath(var.state_dir != "" ? var.state_dir : "${path.root}/.meridian")
  meridian      = "${var.python} -m meridian"
  agent_command = var.agent_command != "" ? var.agent_command : "${local.meridian} agent"
  scripts       = abspath("${path.module}/scripts")
}

module "region" {
  source   = "../../modules/region"
  for_each = var.regions

  name                = each.key
  cloud_provider      = "local"
  lat                 = each.value.lat
  lon                 = each.value.lon
  gpu_type            = each.value.gpu_type
  gpu_count           = each.value.gpu_count
  control_plane_url   = var.control_plane_url
  admin_token_file    = var.admin_token_file
  credential_file     = "${local.state_dir}/${each.key}/agent-credential"
  meridian_command    = local.meridian
  agent_control_plane = var.control_plane_grpc
  agent_extra_args    = concat(["--simulate-gpus", tostring(each.value.gpu_count)], var.agent_extra_args)
}

resource "terraform_data" "agent" {
  for_each = var.regions

  # a new registration, command or argument list restarts the agent
  triggers_replace = [
    module.region[each.key].id,
    local.agent_command,
    module.region[each.key].agent_args,
  ]

  input = {
    pid_file    = "${local.state_dir}/${each.key}/agent.pid"
    log_file    = "${local.state_dir}/${each.key}/agent.log"
    stop_script = "${local.scripts}/stop-agent.sh"
  }

  provisioner "local-exec" {
    command = join(" ", concat(
      [
        "sh '${local.scripts}/start-agent.sh'",
        "'${local.state_dir}/${each.key}/agent.pid'",
        "'${local.state_dir}/${each.key}/agent.log'",
        local.agent_command,
      ],
      [for a in module.region[each.key].agent_args : "'${replace(a, "'", "'\\''")}'"],
    ))
  }

  provisioner "local-exec" {
    when    = destroy
    command = "sh '${self.input.stop_script}' '${self.input.pid_file}'"
  }

  depends_on = [module.region]
}

# Destroyed first (it depends on the agent): refuses, before any agent is stopped,
# while a region still has deployments.
resource "terraform_data" "destroy_guard" {
  for_each = var.regions

  input = { check_command = module.region[each.key].destroy_check_command }

  provisioner "local-exec" {
    when    = destroy
    command = self.input.check_command
  }

  depends_on = [terraform_data.agent]
}
