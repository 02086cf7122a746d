# One Meridian region on AWS: registration with the control plane, the agent
# credential in SSM Parameter Store, and a GPU instance whose cloud-init installs
# Meridian and runs `meridian agent` under systemd.

locals {
  credential_path      = "/etc/meridian/agent-credential"
  credential_parameter = "/meridian/${var.name}/agent-credential"
}

module "registration" {
  source = "../../../modules/region"

  name                  = var.name
  cloud_provider        = "aws"
  lat                   = var.lat
  lon                   = var.lon
  gpu_type              = var.gpu_type
  gpu_count             = var.gpu_count
  control_plane_url     = var.control_plane_url
  admin_token_file      = var.admin_token_file
  credential_file       = var.credential_file
  meridian_command      = var.meridian_command
  agent_control_plane   = var.control_plane_grpc
  agent_credential_path = local.credential_path
}

# read after the registration wrote it (the dependency defers the read to apply time)
data "local_sensitive_file" "credential" {
  filename   = module.registration.credential_file
  depends_on = [module.registration]
}

resource "aws_ssm_parameter" "credential" {
  name        = local.credential_parameter
  description = "Meridian agent credential of region ${var.name}"
  type        = "SecureString"
  value       = trimspace(data.local_sensitive_file.credential.content)
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "agent" {
  name_prefix        = "meridian-agent-"
  assume_role_policy = data.aws_iam_policy_document.assume.json
}

data "aws_iam_policy_document" "read_credential" {
  statement {
    actions   = ["ssm:GetParameter"]
    resources = [aws_ssm_parameter.credential.arn]
  }
}

resource "aws_iam_role_policy" "read_credential" {
  name   = "read-agent-credential"
  role   = aws_iam_role.agent.id
  policy = data.aws_iam_policy_document.read_credential.json
}

# Session Manager instead of open SSH
resource "aws_iam_role_policy_attachment" "ssm_core" {
  role       = aws_iam_role.agent.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "agent" {
  name_prefix = "meridian-agent-"
  role        = aws_iam_role.agent.name
}

data "aws_vpc" "default" {
  count   = var.vpc_id == null ? 1 : 0
  default = true
}

resource "aws_security_group" "agent" {
  name_prefix = "meridian-${var.name}-"
  description = "Meridian region ${var.name}: workers reachable from the routers"
  vpc_id      = var.vpc_id != null ? var.vpc_id : data.aws_vpc.default[0].id

  dynamic "ingress" {
    for_each = length(var.router_cidrs) > 0 ? var.worker_ports : []
    content {
      description = "Meridian worker (Open Inference Protocol)"
      from_port   = ingress.value
      to_port     = ingress.value
      protocol    = "tcp"
      cidr_blocks = var.router_cidrs
    }
  }

  dynamic "ingress" {
    for_each = length(var.ssh_cidrs) > 0 ? [22] : []
    content {
      description = "SSH"
      from_port   = 22
      to_port     = 22
      protocol    = "tcp"
      cidr_blocks = var.ssh_cidrs
    }
  }

  egress {
    description = "pip, the control plane, artifact downloads"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }

  lifecycle {
    create_before_destroy = true
  }
}

data "aws_ami" "gpu" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["amazon"]

  filter {
    name   = "name"
    values = ["Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) *"]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

resource "aws_instance" "agent" {
  ami                    = var.ami_id != null ? var.ami_id : data.aws_ami.gpu[0].id
  instance_type          = var.instance_type
  subnet_id              = var.subnet_id
  vpc_security_group_ids = [aws_security_group.agent.id]
  iam_instance_profile   = aws_iam_instance_profile.agent.name
  key_name               = var.key_name

  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    region               = var.name
    aws_region           = var.aws_region
    credential_parameter = aws_ssm_parameter.credential.name
    credential_path      = local.credential_path
    meridian_package     = var.meridian_package
    # systemd splits ExecStart on spaces and honours double quotes
    agent_args = join(" ", [for a in module.registration.agent_args : "\"${replace(a, "\"", "\\\"")}\""])
  })
  user_data_replace_on_change = true

  metadata_options {
    http_tokens   = "required"
    http_endpoint = "enabled"
  }

  root_block_device {
    volume_size = var.root_volume_gb
    volume_type = "gp3"
    encrypted   = true
  }

  tags = {
    Name            = "meridian-${var.name}"
    meridian_region = var.name
  }
}

# Destroyed first (it depends on the instance): refuses, before the instance goes,
# while the region still has deployments.
resource "terraform_data" "destroy_guard" {
  input = { check_command = module.registration.destroy_check_command }

  provisioner "local-exec" {
    when    = destroy
    command = self.input.check_command
  }

  depends_on = [aws_instance.agent]
}
