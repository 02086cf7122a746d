variable "name" {
  description = "Meridian region name, e.g. aws-us-east-1."
  type        = string
}

variable "aws_region" {
  description = "The AWS region of the provider this module is given (for the instance's AWS CLI calls)."
  type        = string
}

variable "lat" {
  description = "Latitude of the region's data centres."
  type        = number
}

variable "lon" {
  description = "Longitude of the region's data centres."
  type        = number
}

variable "instance_type" {
  description = "A GPU instance type, e.g. g6.xlarge (L4) or g5.xlarge (A10G)."
  type        = string
}

variable "gpu_type" {
  description = "The GPU model, as registered."
  type        = string
}

variable "gpu_count" {
  description = "GPUs of the instance, as registered."
  type        = number
}

variable "ami_id" {
  description = "AMI to boot; null means the newest Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04)."
  type        = string
  default     = null
}

variable "root_volume_gb" {
  description = "Root volume size (models and their artifacts are cached there)."
  type        = number
  default     = 200
}

variable "vpc_id" {
  description = "VPC of the instance; null means the default VPC."
  type        = string
  default     = null
}

variable "subnet_id" {
  description = "Subnet of the instance (with a route out, for pip and the control plane); null means a default subnet."
  type        = string
  default     = null
}

variable "control_plane_url" {
  description = "Base URL of the control plane's REST admin API (used from the machine running Terraform)."
  type        = string
}

variable "control_plane_grpc" {
  description = "host:port of the control plane's gRPC endpoint (dialled by the agent)."
  type        = string
}

variable "admin_token_file" {
  description = "A file holding an admin-scope API token; null means MERIDIAN_ADMIN_TOKEN in Terraform's environment."
  type        = string
  default     = null
}

variable "credential_file" {
  description = "Where the agent credential is written on the machine running Terraform."
  type        = string
}

variable "meridian_command" {
  description = "How to run the meridian CLI on the machine running Terraform."
  type        = string
  default     = "meridian"
}

variable "meridian_package" {
  description = "What pip installs on the instance."
  type        = string
  default     = "meridian[gpu]"
}

variable "router_cidrs" {
  description = "CIDR blocks allowed to reach the workers' ports."
  type        = list(string)
  default     = []
}

variable "ssh_cidrs" {
  description = "CIDR blocks allowed to SSH in."
  type        = list(string)
  default     = []
}

variable "key_name" {
  description = "EC2 key pair name; null for none."
  type        = string
  default     = null
}

variable "worker_ports" {
  description = "TCP ports the workers listen on."
  type        = list(number)
  default     = [8000, 8001]
}
