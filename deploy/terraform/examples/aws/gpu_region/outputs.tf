output "name" {
  description = "The Meridian region name."
  value       = module.registration.name
}

output "id" {
  description = "Id of the region's registration."
  value       = module.registration.id
}

output "endpoint" {
  description = "The region's resource in the admin API."
  value       = module.registration.endpoint
}

output "credential_file" {
  description = "Where the agent credential was written on the machine running Terraform."
  value       = module.registration.credential_file
}

output "instance_id" {
  description = "The GPU instance running the agent."
  value       = aws_instance.agent.id
}

output "public_ip" {
  description = "Public address of the instance (null in a private subnet)."
  value       = aws_instance.agent.public_ip
}

output "private_ip" {
  description = "Private address of the instance."
  value       = aws_instance.agent.private_ip
}
