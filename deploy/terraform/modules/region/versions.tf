terraform {
  # terraform_data is built in from 1.4 on: this module needs no provider at all
  required_version = ">= 1.4"
}
