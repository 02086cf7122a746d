terraform {
  # only built-ins (terraform_data + local-exec): `terraform init` downloads nothing
  required_version = ">= 1.4"
}
