variable "control_plane_url" {
  description = "Base URL of the control plane's REST admin API, reachable from the machine running Terraform."
  type        = string
}

variable "control_plane_grpc" {
  description = "host:port of the control plane's gRPC endpoint, reachable from the GPU instances (the agents dial it)."
  type        = string
}

variable "admin_token_file" {
  description = "A file holding an admin-scope API token of the control plane; null means MERIDIAN_ADMIN_TOKEN in Terraform's environment. Either way the token stays out of the Terraform state."
  type        = string
  default     = null
}

variable "meridian_command" {
  description = "How to run the meridian CLI on the machine running Terraform."
  type        = string
  default     = "meridian"
}

variable "meridian_package" {
  description = "What pip installs on the instances: a requirement such as \"meridian[gpu]==0.1.0\" or a wheel URL."
  type        = string
  default     = "meridian[gpu]"
}

variable "state_dir" {
  description = "Where agent credentials are written on the machine running Terraform; empty means ./.meridian here."
  type        = string
  default     = ""
}

variable "instances" {
  description = "The GPU instance of each AWS region (keys: us-east-1, eu-central-1, ap-northeast-1)."
  type = map(object({
    instance_type = string
    gpu_type      = string
    gpu_count     = number
  }))

  default = {
    "us-east-1" = {
      instance_type = "g6.xlarge" # 1x NVIDIA L4
      gpu_type      = "L4"
      gpu_count     = 1
    }
    "eu-central-1" = {
      instance_type = "g6.xlarge"
      gpu_type      = "L4"
      gpu_count     = 1
    }
    "ap-northeast-1" = {
      instance_type = "g5.xlarge" # 1x NVIDIA A10G
      gpu_type      = "A10G"
      gpu_count     = 1
    }
  }

  validation {
    condition     = alltrue([for r in ["us-east-1", "eu-central-1", "ap-northeast-1"] : contains(keys(var.instances), r)])
    error_message = "instances needs an entry for us-east-1, eu-central-1 and ap-northeast-1 (one per provider alias)."
  }
}

variable "router_cidrs" {
  description = "CIDR blocks of the routers, allowed to reach the workers' ports."
  type        = list(string)
  default     = []
}

variable "ssh_cidrs" {
  description = "CIDR blocks allowed to SSH in; empty means no SSH (use SSM Session Manager)."
  type        = list(string)
  default     = []
}

variable "key_name" {
  description = "EC2 key pair name for SSH; null for none."
  type        = string
  default     = null
}

variable "worker_ports" {
  description = "TCP ports the workers listen on (Open Inference Protocol REST and gRPC)."
  type        = list(number)
  default     = [8000, 8001]
}

variable "tags" {
  description = "Tags on every resource."
  type        = map(string)
  default = {
    project = "meridian"
  }
}
