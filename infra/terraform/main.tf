# The concurrency service on AWS: ECS Fargate tasks behind an HTTPS-only ALB (with WAF), live sessions in an
# ElastiCache cluster (cluster mode, TLS, RBAC user), signing keys on one EFS key directory shared by every
# task and kept by an hourly `keys maintain` task, secrets in Secrets Manager under a customer KMS key.
# How to apply it, and what every variable means: infra/README.md.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws    = { source = "hashicorp/aws", version = ">= 5.100, < 7.0" }
    random = { source = "hashicorp/random", version = "~> 3.6" }
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = merge({ Service = var.name, ManagedBy = "terraform" }, var.tags)
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = var.region

  container_name = "concurrency-service"
  container_port = 8000
  # The image's user (infra/Dockerfile): the service and the key task run as it, and the EFS access point
  # writes the key directory as it.
  app_uid = 10001

  user_tokens     = var.user_jwks_url != ""
  trusted_callers = var.trusted_callers
  auth_modes      = compact([local.user_tokens ? "user-token" : "", local.trusted_callers ? "trusted-caller" : ""])

  service_host = var.domain_name != "" ? var.domain_name : aws_lb.service.dns_name
}
