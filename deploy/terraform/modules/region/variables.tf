variable "name" {
  description = "Region name in the registry, e.g. aws-us-east-1 (lowercase letters, digits, '-')."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,63}$", var.name))
    error_message = "name must be lowercase letters, digits and '-', starting with a letter or digit, at most 64 characters."
  }
}

variable "cloud_provider" {
  description = "Where the region runs (the registry's provider field), e.g. aws, gcp, local."
  type        = string
  default     = ""
}

variable "lat" {
  description = "Latitude of the region's data centre in degrees; the router's latency model uses it."
  type        = number

  validation {
    condition     = var.lat >= -90 && var.lat <= 90
    error_message = "lat must be between -90 and 90."
  }
}

variable "lon" {
  description = "Longitude of the region's data centre in degrees."
  type        = number

  validation {
    condition     = var.lon >= -180 && var.lon <= 180
    error_message = "lon must be between -180 and 180."
  }
}

variable "gpu_type" {
  description = "GPU model in the region, e.g. L4, A10G, T4."
  type        = string
  default     = ""
}

variable "gpu_count" {
  description = "Number of GPUs in the region."
  type        = number
  default     = 0

  validation {
    condition     = var.gpu_count >= 0 && floor(var.gpu_count) == var.gpu_count
    error_message = "gpu_count must be a whole number >= 0."
  }
}

variable "status" {
  description = "Enforce this status (active, draining, disabled); null leaves an operator's choice alone."
  type        = string
  default     = null

  validation {
    condition     = var.status == null ? true : contains(["active", "draining", "disabled"], var.status)
    error_message = "status must be active, draining or disabled (or null)."
  }
}

variable "control_plane_url" {
  description = "Base URL of the control plane's REST admin API, e.g. https://cp.example.com:8080."
  type        = string
}

variable "admin_token_file" {
  description = "A file holding an admin-scope API token; null means MERIDIAN_ADMIN_TOKEN in Terraform's environment. The token itself never enters the Terraform state."
  type        = string
  default     = null
}

variable "credential_file" {
  description = "Where the agent credential is written (mode 0600) on the machine running Terraform; removed on destroy."
  type        = string
}

variable "meridian_command" {
  description = "How to run the meridian CLI on the machine running Terraform, e.g. \"meridian\" or \"python3 -m meridian\"."
  type        = string
  default     = "meridian"
}

variable "agent_control_plane" {
  description = "host:port of the control plane's gRPC endpoint, as the region's agent dials it."
  type        = string
  default     = "127.0.0.1:50051"
}

variable "agent_credential_path" {
  description = "Path of the credential file on the agent's host; null means credential_file (agent on this machine)."
  type        = string
  default     = null
}

variable "agent_extra_args" {
  description = "More arguments for the agent, e.g. [\"--simulate-gpus\", \"2\"]."
  type        = list(string)
  default     = []
}
