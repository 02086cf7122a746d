# Registers one region with the Meridian control plane through `meridian regions`
# (an idempotent client of the REST admin API), using only Terraform built-ins.
#
# The admin token is read by the command from admin_token_file or from
# MERIDIAN_ADMIN_TOKEN in Terraform's environment, never passed as a value: whatever a
# terraform_data keeps in `input` comes back unredacted in its `output` (in the state,
# plans and `terraform show`), and a destroy-time provisioner can read nothing else.
#
# Two resources, so that changing a region's fields never deregisters it:
# - terraform_data.registration lives as long as the region: created with
#   `regions apply`, destroyed with `regions delete` (a region that still has
#   deployments is refused, so the destroy fails loudly instead of orphaning them).
#   It is replaced only when the name or the control plane changes.
# - terraform_data.settings is replaced whenever a field changes; each
#   replacement runs `regions apply` again, which PATCHes the region in place.

locals {
  control_plane_url = trimsuffix(var.control_plane_url, "/")

  fields = {
    provider  = var.cloud_provider
    lat       = var.lat
    lon       = var.lon
    gpu_type  = var.gpu_type
    gpu_count = var.gpu_count
    status    = var.status
  }

  # every value single-quoted for /bin/sh
  q = {
    url        = "'${replace(local.control_plane_url, "'", "'\\''")}'"
    name       = "'${var.name}'"
    credential = "'${replace(var.credential_file, "'", "'\\''")}'"
    token_file = var.admin_token_file == null ? "" : "'${replace(var.admin_token_file, "'", "'\\''")}'"
    provider   = "'${replace(var.cloud_provider, "'", "'\\''")}'"
    gpu_type   = "'${replace(var.gpu_type, "'", "'\\''")}'"
  }

  common_args = join(" ", compact([
    "--control-plane ${local.q.url} --name ${local.q.name} --credential-file ${local.q.credential}",
    var.admin_token_file == null ? "" : "--token-file ${local.q.token_file}",
  ]))

  apply_command = join(" ", compact([
    "${var.meridian_command} regions apply ${local.common_args}",
    "--provider ${local.q.provider} --lat ${var.lat} --lon ${var.lon}",
    "--gpu-type ${local.q.gpu_type} --gpu-count ${var.gpu_count}",
    var.status == null ? "" : "--status ${var.status}",
  ]))

  delete_command = "${var.meridian_command} regions delete ${local.common_args}"
  check_command  = "${var.meridian_command} regions delete --check-only ${local.common_args}"

  agent_args = concat(
    [
      "--control-plane", var.agent_control_plane,
      "--region", var.name,
      "--credential-file", coalesce(var.agent_credential_path, var.credential_file),
      "--gpu-type", var.gpu_type,
    ],
    var.agent_extra_args,
  )
}

resource "terraform_data" "registration" {
  triggers_replace = [var.name, local.control_plane_url]

  # a destroy-time provisioner may read only self: keep what it needs here
  input = {
    name           = var.name
    delete_command = local.delete_command
  }

  provisioner "local-exec" {
    command = local.apply_command
  }

  provisioner "local-exec" {
    when    = destroy
    command = self.input.delete_command
  }
}

resource "terraform_data" "settings" {
  triggers_replace = [local.fields, var.credential_file]

  provisioner "local-exec" {
    command = local.apply_command
  }

  depends_on = [terraform_data.registration]
}
