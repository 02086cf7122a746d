# One GPU instance per AWS region, each registered as a Meridian region and running
# the region agent under systemd. The agent credential goes from the control plane
# to SSM Parameter Store (SecureString) and from there to the instance through its
# IAM role; it never appears in user data.

locals {
  state_dir = abspath(var.state_dir != "" ? var.state_dir : "${path.root}/.meridian")

  # where each AWS region's data centres are (cloudping.co's region table, the same
  # coordinates the router's latency model uses)
  location = {
    "us-east-1"      = { lat = 39.0458, lon = -77.4874 } # Ashburn
    "eu-central-1"   = { lat = 50.1109, lon = 8.6821 }   # Frankfurt
    "ap-northeast-1" = { lat = 35.6762, lon = 139.6503 } # Tokyo
  }

  common = {
    control_plane_url  = var.control_plane_url
    control_plane_grpc = var.control_plane_grpc
    meridian_command   = var.meridian_command
    meridian_package   = var.meridian_package
    router_cidrs       = var.router_cidrs
    ssh_cidrs          = var.ssh_cidrs
    key_name           = var.key_name
    worker_ports       = var.worker_ports
  }
}

module "us_east_1" {
  source    = "./gpu_region"
  providers = { aws = aws.us_east_1 }

  name               = "aws-us-east-1"
  aws_region         = "us-east-1"
  lat                = local.location["us-east-1"].lat
  lon                = local.location["us-east-1"].lon
  instance_type      = var.instances["us-east-1"].instance_type
  gpu_type           = var.instances["us-east-1"].gpu_type
  gpu_count          = var.instances["us-east-1"].gpu_count
  admin_token_file   = var.admin_token_file
  credential_file    = "${local.state_dir}/aws-us-east-1/agent-credential"
  control_plane_url  = local.common.control_plane_url
  control_plane_grpc = local.common.control_plane_grpc
  meridian_command   = local.common.meridian_command
  meridian_package   = local.common.meridian_package
  router_cidrs       = local.common.router_cidrs
  ssh_cidrs          = local.common.ssh_cidrs
  key_name           = local.common.key_name
  worker_ports       = local.common.worker_ports
}

module "eu_central_1" {
  source    = "./gpu_region"
  providers = { aws = aws.eu_central_1 }

  name               = "aws-eu-central-1"
  aws_region         = "eu-central-1"
  lat                = local.location["eu-central-1"].lat
  lon                = local.location["eu-central-1"].lon
  instance_type      = var.instances["eu-central-1"].instance_type
  gpu_type           = var.instances["eu-central-1"].gpu_type
  gpu_count          = var.instances["eu-central-1"].gpu_count
  admin_token_file   = var.admin_token_file
  credential_file    = "${local.state_dir}/aws-eu-central-1/agent-credential"
  control_plane_url  = local.common.control_plane_url
  control_plane_grpc = local.common.control_plane_grpc
  meridian_command   = local.common.meridian_command
  meridian_package   = local.common.meridian_package
  router_cidrs       = local.common.router_cidrs
  ssh_cidrs          = local.common.ssh_cidrs
  key_name           = local.common.key_name
  worker_ports       = local.common.worker_ports
}

module "ap_northeast_1" {
  source    = "./gpu_region"
  providers = { aws = aws.ap_northeast_1 }

  name               = "aws-ap-northeast-1"
  aws_region         = "ap-northeast-1"
  lat                = local.location["ap-northeast-1"].lat
  lon                = local.location["ap-northeast-1"].lon
  instance_type      = var.instances["ap-northeast-1"].instance_type
  gpu_type           = var.instances["ap-northeast-1"].gpu_type
  gpu_count          = var.instances["ap-northeast-1"].gpu_count
  admin_token_file   = var.admin_token_file
  credential_file    = "${local.state_dir}/aws-ap-northeast-1/agent-credential"
  control_plane_url  = local.common.control_plane_url
  control_plane_grpc = local.common.control_plane_grpc
  meridian_command   = local.common.meridian_command
  meridian_package   = local.common.meridian_package
  router_cidrs       = local.common.router_cidrs
  ssh_cidrs          = local.common.ssh_cidrs
  key_name           = local.common.key_name
  worker_ports       = local.common.worker_ports
}
