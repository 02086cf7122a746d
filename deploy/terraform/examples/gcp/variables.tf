variable "project" {
  description = "Google Cloud project id."
  type        = string
}

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

variable "boot_image" {
  description = "Boot image; the startup script installs the NVIDIA server driver with ubuntu-drivers when nvidia-smi is missing."
  type        = string
  default     = "ubuntu-os-cloud/ubuntu-2404-lts-amd64"
}

variable "network" {
  description = "VPC network of the instances."
  type        = string
  default     = "default"
}

variable "router_cidrs" {
  description = "CIDR blocks of the routers, allowed to reach the workers' ports."
  type        = list(string)
  default     = []
}

variable "worker_ports" {
  description = "TCP ports the workers listen on (Open Inference Protocol REST and gRPC)."
  type        = list(number)
  default     = [8000, 8001]
}

variable "regions" {
  description = "Meridian regions (keyed by their registry name) and the GPU instance of each."
  type = map(object({
    region       = string
    zone         = string
    lat          = number
    lon          = number
    machine_type = string
    accelerator  = string # the Compute Engine accelerator type
    gpu_type     = string # as registered with Meridian
    gpu_count    = number
  }))

  # zones that offer T4s; coordinates of the Google Cloud data centre sites
  default = {
    "gcp-us-central1" = {
      region       = "us-central1"
      zone         = "us-central1-a"
      lat          = 41.2619 # Council Bluffs, Iowa
      lon          = -95.8608
      machine_type = "n1-standard-8"
      accelerator  = "nvidia-tesla-t4"
      gpu_type     = "T4"
      gpu_count    = 1
    }
    "gcp-europe-west4" = {
      region       = "europe-west4"
      zone         = "europe-west4-a"
      lat          = 53.4386 # Eemshaven, Netherlands
      lon          = 6.8355
      machine_type = "n1-standard-8"
      accelerator  = "nvidia-tesla-t4"
      gpu_type     = "T4"
      gpu_count    = 1
    }
    "gcp-asia-northeast1" = {
      region       = "asia-northeast1"
      zone         = "asia-northeast1-a"
      lat          = 35.6895 # Tokyo
      lon          = 139.6917
      machine_type = "n1-standard-8"
      accelerator  = "nvidia-tesla-t4"
      gpu_type     = "T4"
      gpu_count    = 1
    }
  }
}

variable "labels" {
  description = "Labels on every instance and secret."
  type        = map(string)
  default = {
    project = "meridian"
  }
}
