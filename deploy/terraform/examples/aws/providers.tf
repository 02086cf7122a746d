# Terraform cannot iterate over provider configurations, so every AWS region is its
# own provider alias and its own module block in main.tf. To add a region, add an
# alias here, a module block there and an entry in var.instances.

provider "aws" {
  alias  = "us_east_1"
  region = "us-east-1"

  default_tags {
    tags = var.tags
  }
}

provider "aws" {
  alias  = "eu_central_1"
  region = "eu-central-1"

  default_tags {
    tags = var.tags
  }
}

provider "aws" {
  alias  = "ap_northeast_1"
  region = "ap-northeast-1"

  default_tags {
    tags = var.tags
  }
}
