# Offline tests of the stack's logic: `terraform init && terraform test` in infra/terraform. The providers are
# mocked ("apply" creates nothing), so no AWS account is needed, only the providers that init downloads.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_availability_zones" {
    defaults = { names = ["us-east-1c", "us-east-1a", "us-east-1b"] }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_data "aws_elb_service_account" {
    defaults = { arn = "arn:aws:iam::127311923021:root" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000" }
  }
  mock_resource "aws_lb" {
    defaults = { arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/cs/0123456789abcdef" }
  }
  mock_resource "aws_lb_target_group" {
    defaults = { arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/cs/0123456789abcdef" }
  }
  mock_resource "aws_wafv2_web_acl" {
    defaults = { arn = "arn:aws:wafv2:us-east-1:123456789012:regional/webacl/cs/00000000-0000-0000-0000-000000000000" }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:us-east-1:123456789012:log-group:cs" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/cs" }
  }
  mock_resource "aws_ecs_cluster" {
    defaults = { arn = "arn:aws:ecs:us-east-1:123456789012:cluster/cs" }
  }
  mock_resource "aws_ecs_task_definition" {
    defaults = { arn = "arn:aws:ecs:us-east-1:123456789012:task-definition/cs:1" }
  }
  mock_resource "aws_secretsmanager_secret" {
    defaults = { arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:cs-AbCdEf" }
  }
  mock_resource "aws_efs_file_system" {
    defaults = { arn = "arn:aws:elasticfilesystem:us-east-1:123456789012:file-system/fs-01234567" }
  }
  mock_resource "aws_efs_access_point" {
    defaults = { arn = "arn:aws:elasticfilesystem:us-east-1:123456789012:access-point/fsap-0123456789abcdef0" }
  }
  mock_resource "aws_s3_bucket" {
    defaults = { arn = "arn:aws:s3:::cs-logs" }
  }
}

mock_provider "random" {}

variables {
  certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
  image           = "123456789012.dkr.ecr.us-east-1.amazonaws.com/concurrency-service:1.0.0"
  user_jwks_url   = "https://idp.example/.well-known/jwks.json"
  user_issuer     = "https://idp.example/"
  user_audience   = "playback"
}

# First, as on a new stack: no service task until the key task has made the first signing key.
run "first_apply_without_service_tasks" {
  variables {
    service_enabled = false
  }
  assert {
    condition     = aws_ecs_service.service.desired_count == 0 && aws_appautoscaling_target.service.max_capacity == 0
    error_message = "no service task before the first signing key exists"
  }
  assert {
    condition     = aws_scheduler_schedule.keys.schedule_expression == "rate(1 hour)"
    error_message = "the key task is scheduled all the same"
  }
}

run "user_tokens_in_a_new_vpc" {
  assert {
    condition     = local.azs == tolist(["us-east-1a", "us-east-1b"]) && length(aws_subnet.private) == 2 && length(aws_nat_gateway.this) == 2
    error_message = "two zones, in name order, one NAT gateway each"
  }
  assert {
    condition     = length(aws_efs_mount_target.keys) == 2 && length(aws_flow_log.this) == 1
    error_message = "an EFS mount target per private subnet, and flow logs"
  }
  assert {
    condition     = { for e in local.environment : e.name => e.value }["CONCURRENCY_AUTH"] == "user-token"
    error_message = "user-token mode only"
  }
  assert {
    condition     = !contains([for e in local.environment : e.value], "anonymous")
    error_message = "never anonymous"
  }
  assert {
    condition = alltrue([for name in ["CONCURRENCY_USER_JWKS", "CONCURRENCY_USER_ISSUER", "CONCURRENCY_USER_AUDIENCE",
      "CONCURRENCY_REDIS_URL", "CONCURRENCY_REDIS_MODE", "CONCURRENCY_REDIS_USERNAME", "CONCURRENCY_KEYS_DIR",
      "CONCURRENCY_KEYS_PROPAGATION", "CONCURRENCY_MAX_STREAMS", "CONCURRENCY_SESSION_TTL",
    ] : contains([for e in local.environment : e.name], name)])
    error_message = "every setting the service needs"
  }
  assert {
    condition     = startswith({ for e in local.environment : e.name => e.value }["CONCURRENCY_REDIS_URL"], "rediss://")
    error_message = "TLS to Redis"
  }
  assert {
    condition     = sort([for s in local.service_secrets : s.name]) == tolist(["CONCURRENCY_ADMIN_TOKEN", "CONCURRENCY_REDIS_PASSWORD"])
    error_message = "secrets: Redis password and admin token, no caller secret without trusted_callers"
  }
  assert {
    condition     = length(aws_secretsmanager_secret.callers) == 0
    error_message = "no caller secret without trusted_callers"
  }
  assert {
    condition     = aws_appautoscaling_target.service.min_capacity == 2 && aws_appautoscaling_target.service.max_capacity == 20
    error_message = "autoscaling between 2 and 20 tasks (it raises the desired count of the service to 2)"
  }
  assert {
    condition     = { for e in local.environment : e.name => e.value }["CONCURRENCY_KEYS_PROPAGATION"] == "90"
    error_message = "key propagation bound for EFS"
  }
  assert {
    condition     = local.ecr_repository_arn == "arn:aws:ecr:us-east-1:123456789012:repository/concurrency-service"
    error_message = "ECR pull rights for the image's repository only"
  }
  assert {
    condition     = output.jwks_url == "https://${aws_lb.service.dns_name}/.well-known/jwks.json"
    error_message = "JWKS URL on the ALB's name when no domain_name is set"
  }
}

run "service_container" {
  assert {
    condition = (
      jsondecode(aws_ecs_task_definition.service.container_definitions)[0].readonlyRootFilesystem == true &&
      jsondecode(aws_ecs_task_definition.service.container_definitions)[0].user == "10001:10001" &&
      jsondecode(aws_ecs_task_definition.service.container_definitions)[0].linuxParameters.tmpfs[0].containerPath == "/tmp"
    )
    error_message = "read-only root, uid 10001, tmpfs /tmp"
  }
  assert {
    condition     = jsondecode(aws_ecs_task_definition.service.container_definitions)[0].mountPoints == [{ sourceVolume = "keys", containerPath = "/keys", readOnly = true }]
    error_message = "the service mounts the key directory read-only"
  }
  assert {
    condition     = jsondecode(aws_ecs_task_definition.keys.container_definitions)[0].mountPoints[0].readOnly == false
    error_message = "the key task mounts it read-write"
  }
  assert {
    condition     = jsondecode(aws_ecs_task_definition.keys.container_definitions)[0].command == ["keys", "maintain", "--dir", "/keys", "--rotate-after", "30d"]
    error_message = "keys maintain with the rotation period"
  }
  assert {
    condition     = one(aws_lb_target_group.service.health_check).path == "/readyz" && aws_lb_target_group.service.port == 8000
    error_message = "target group: port 8000, health check /readyz"
  }
}

run "trusted_callers_only" {
  variables {
    user_jwks_url   = ""
    user_issuer     = ""
    user_audience   = ""
    trusted_callers = true
    admin_token     = false
  }
  assert {
    condition     = { for e in local.environment : e.name => e.value }["CONCURRENCY_AUTH"] == "trusted-caller"
    error_message = "trusted-caller mode only"
  }
  assert {
    condition     = jsonencode([for s in local.service_secrets : s.name]) == jsonencode(["CONCURRENCY_REDIS_PASSWORD", "CONCURRENCY_CALLERS"])
    error_message = "the caller secret is injected; no admin token"
  }
  assert {
    condition     = !contains([for e in local.environment : e.name], "CONCURRENCY_USER_JWKS")
    error_message = "no identity provider settings"
  }
}

run "both_modes" {
  variables {
    trusted_callers = true
  }
  assert {
    condition     = { for e in local.environment : e.name => e.value }["CONCURRENCY_AUTH"] == "user-token,trusted-caller"
    error_message = "both modes"
  }
}

run "no_authenticated_mode_is_refused" {
  command = plan
  variables {
    user_jwks_url   = ""
    trusted_callers = false
  }
  expect_failures = [aws_ecs_task_definition.service]
}

run "jwks_without_issuer_is_refused" {
  command = plan
  variables {
    user_issuer = ""
  }
  expect_failures = [aws_ecs_task_definition.service]
}

run "plain_http_jwks_is_refused" {
  command = plan
  variables {
    user_jwks_url = "http://idp.example/jwks.json"
  }
  expect_failures = [var.user_jwks_url]
}

run "anonymous_through_extra_environment_is_refused" {
  command = plan
  variables {
    extra_environment = { CONCURRENCY_ALLOW_ANONYMOUS = "true" }
  }
  expect_failures = [var.extra_environment]
}

run "stack_settings_through_extra_environment_are_refused" {
  command = plan
  variables {
    extra_environment = { CONCURRENCY_REDIS_URL = "redis://10.0.0.1:6379" }
  }
  expect_failures = [var.extra_environment]
}

run "plan_limits_through_extra_environment" {
  variables {
    extra_environment = { CONCURRENCY_PLAN_LIMITS = "basic=1,premium=4" }
  }
  assert {
    condition     = { for e in local.environment : e.name => e.value }["CONCURRENCY_PLAN_LIMITS"] == "basic=1,premium=4"
    error_message = "extra settings reach the containers"
  }
}

run "existing_vpc" {
  variables {
    create_vpc         = false
    vpc_id             = "vpc-0123456789abcdef0"
    public_subnet_ids  = ["subnet-0a", "subnet-0b"]
    private_subnet_ids = ["subnet-1a", "subnet-1b", "subnet-1c"]
    domain_name        = "concurrency.example.com"
  }
  assert {
    condition     = length(aws_vpc.this) == 0 && length(aws_nat_gateway.this) == 0 && length(aws_flow_log.this) == 0
    error_message = "no network is made"
  }
  assert {
    condition     = length(aws_efs_mount_target.keys) == 3 && aws_lb.service.subnets == toset(["subnet-0a", "subnet-0b"])
    error_message = "the given subnets are used"
  }
  assert {
    condition     = output.service_url == "https://concurrency.example.com"
    error_message = "service URL on the domain name"
  }
}

run "existing_vpc_needs_subnets" {
  command = plan
  variables {
    create_vpc = false
    vpc_id     = "vpc-0123456789abcdef0"
  }
  expect_failures = [aws_lb.service]
}

run "one_nat_gateway_in_pinned_zones" {
  variables {
    availability_zones = ["us-east-1b", "us-east-1c", "us-east-1a"]
    single_nat_gateway = true
  }
  assert {
    condition     = length(aws_subnet.private) == 3 && length(aws_nat_gateway.this) == 1 && aws_subnet.private[0].availability_zone == "us-east-1b"
    error_message = "the pinned zones, one NAT gateway"
  }
}
