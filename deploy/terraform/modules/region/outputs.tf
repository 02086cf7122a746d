output "name" {
  description = "The region's name in the registry."
  value       = var.name
  depends_on  = [terraform_data.settings]
}

output "id" {
  description = "Id of this registration; it changes only when the region is registered anew."
  value       = terraform_data.registration.id
}

output "endpoint" {
  description = "The region's resource in the admin API."
  value       = "${local.control_plane_url}/v1/regions/${var.name}"
}

output "credential_file" {
  description = "Where the agent credential was written (0600) on the machine running Terraform."
  value       = var.credential_file
  depends_on  = [terraform_data.settings]
}

output "destroy_check_command" {
  description = "A command that fails, changing nothing, while the region has deployments: run it from a destroy-time provisioner that goes before the region's machines (see the examples)."
  value       = local.check_command
}

output "agent_args" {
  description = "Arguments for `meridian agent` in this region: control plane, region, credential, GPU type and the extra ones."
  value       = local.agent_args
}

output "region" {
  description = "The fields registered for the region."
  value       = merge(local.fields, { name = var.name })
}
