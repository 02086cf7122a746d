variable "control_plane_url" {
  description = "Base URL of the control plane's REST admin API."
  type        = string
  default     = "http://127.0.0.1:8080"
}

variable "control_plane_grpc" {
  description = "host:port of the control plane's gRPC endpoint, which the agents dial."
  type        = string
  default     = "127.0.0.1:50051"
}

variable "admin_token_file" {
  description = "A file holding an admin-scope API token of the control plane; null means MERIDIAN_ADMIN_TOKEN in Terraform's environment. Either way the token stays out of the Terraform state."
  type        = string
  default     = null
}

variable "state_dir" {
  description = "Where credentials, pid files and agent logs live; empty means ./.meridian next to this configuration."
  type        = string
  default     = ""

  validation {
    condition     = length(regexall("'", var.state_dir)) == 0
    error_message = "state_dir may not contain a single quote (it is quoted for /bin/sh)."
  }
}

variable "python" {
  description = "The Python that has Meridian installed; runs `-m meridian regions` and, by default, the agents."
  type        = string
  default     = "python3"
}

variable "agent_command" {
  description = "Command that starts one region agent; it is followed by --control-plane, --region, --credential-file, --gpu-type and --simulate-gpus. Empty means \"<python> -m meridian agent\"."
  type        = string
  default     = ""
}

variable "agent_extra_args" {
  description = "More arguments for every agent, after the ones above, e.g. [\"--report-interval\", \"0.5\"]."
  type        = list(string)
  default     = []
}

variable "regions" {
  description = "Regions to run on this machine, each at a real cloud region's coordinates, with simulated GPUs."
  type = map(object({
    lat       = number
    lon       = number
    gpu_type  = string
    gpu_count = number
  }))

  # AWS region cities (cloudping.co's region table, as in the router's latency model)
  default = {
    "us-east-1" = {
      lat       = 39.0458
      lon       = -77.4874
      gpu_type  = "L4"
      gpu_count = 2
    }
    "eu-central-1" = {
      lat       = 50.1109
      lon       = 8.6821
      gpu_type  = "L4"
      gpu_count = 2
    }
    "ap-northeast-1" = {
      lat       = 35.6762
      lon       = 139.6503
      gpu_type  = "A10G"
      gpu_count = 1
    }
  }
}
