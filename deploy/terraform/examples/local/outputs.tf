output "regions" {
  description = "Per region: registration id, admin API resource, credential file, agent pid and log files."
  value = {
    for name, region in module.region : name => {
      id              = region.id
      endpoint        = region.endpoint
      credential_file = region.credential_file
      pid_file        = terraform_data.agent[name].output.pid_file
      log_file        = terraform_data.agent[name].output.log_file
    }
  }
}

output "state_dir" {
  description = "Where credentials, pid files and logs live."
  value       = local.state_dir
}
