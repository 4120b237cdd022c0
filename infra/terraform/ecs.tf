# The service on ECS Fargate: N tasks in the private subnets behind the ALB, autoscaled on CPU and on
# requests per task. Each container runs as uid 10001 on a read-only root file system (a tmpfs at /tmp is its
# only writable path), drops every Linux capability, and mounts the EFS key directory read-only at /keys.

locals {
  keys_dir = "/keys"

  # The settings the service and the key task share: the key commands read the same CONCURRENCY_* settings
  # as the service (docs/operations.md), so both get the same environment and secrets.
  environment = concat(
    [
      # Never anonymous: at least one of these modes (checked by the precondition below).
      { name = "CONCURRENCY_AUTH", value = join(",", local.auth_modes) },
      { name = "CONCURRENCY_REDIS_URL", value = "rediss://${aws_elasticache_replication_group.sessions.configuration_endpoint_address}:6379" },
      { name = "CONCURRENCY_REDIS_MODE", value = "cluster" },
      { name = "CONCURRENCY_REDIS_USERNAME", value = aws_elasticache_user.service.user_name },
      { name = "CONCURRENCY_KEYS_DIR", value = local.keys_dir },
      { name = "CONCURRENCY_KEYS_PROPAGATION", value = tostring(var.keys_propagation_seconds) },
      { name = "CONCURRENCY_MAX_STREAMS", value = tostring(var.max_streams) },
      { name = "CONCURRENCY_SESSION_TTL", value = tostring(var.session_ttl_seconds) },
    ],
    local.user_tokens ? [
      { name = "CONCURRENCY_USER_JWKS", value = var.user_jwks_url },
      { name = "CONCURRENCY_USER_ISSUER", value = var.user_issuer },
      { name = "CONCURRENCY_USER_AUDIENCE", value = var.user_audience },
    ] : [],
    [for name in sort(keys(var.extra_environment)) : { name = name, value = var.extra_environment[name] }],
  )

  log_options = {
    awslogs-group  = aws_cloudwatch_log_group.service.name
    awslogs-region = local.region
  }

  # What both containers share: the image, its user, a read-only root with a tmpfs /tmp, no capabilities.
  container_base = {
    image                  = var.image
    essential              = true
    user                   = "${local.app_uid}:${local.app_uid}"
    readonlyRootFilesystem = true
    privileged             = false
    environment            = local.environment
    secrets                = local.service_secrets
    linuxParameters = {
      initProcessEnabled = true
      capabilities       = { drop = ["ALL"] }
      tmpfs = [{
        containerPath = "/tmp"
        size          = var.tmp_size_mib
        mountOptions  = ["rw", "nosuid", "nodev", "noexec", "mode=1777"]
      }]
    }
  }
}

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  # ECS Exec is off on every task here; should someone turn it on, its sessions are encrypted and logged.
  configuration {
    execute_command_configuration {
      kms_key_id = aws_kms_key.data.arn
      logging    = "OVERRIDE"
      log_configuration {
        cloud_watch_encryption_enabled = true
        cloud_watch_log_group_name     = aws_cloudwatch_log_group.service.name
      }
    }
  }
}

resource "aws_ecs_task_definition" "service" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.task_cpu
  memory                   = var.task_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.service_task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  volume {
    name = "keys"
    efs_volume_configuration {
      file_system_id     = aws_efs_file_system.keys.id
      transit_encryption = "ENABLED"
      authorization_config {
        access_point_id = aws_efs_access_point.keys.id
        iam             = "ENABLED"
      }
    }
  }

  container_definitions = jsonencode([merge(local.container_base, {
    name         = local.container_name
    command      = ["serve", "--bind", "0.0.0.0:${local.container_port}", "--workers", tostring(var.workers_per_task), "--threads", tostring(var.threads_per_worker)]
    portMappings = [{ containerPort = local.container_port, protocol = "tcp" }]
    mountPoints  = [{ sourceVolume = "keys", containerPath = local.keys_dir, readOnly = true }]
    healthCheck = {
      command     = ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${local.container_port}/healthz', timeout=1)"]
      interval    = 10
      timeout     = 3
      retries     = 3
      startPeriod = 15
    }
    # ECS drains a task from the target group (30 s) before SIGTERM; the service then finishes what it holds.
    stopTimeout      = 40
    ulimits          = [{ name = "nofile", softLimit = 65536, hardLimit = 65536 }]
    logConfiguration = { logDriver = "awslogs", options = merge(local.log_options, { awslogs-stream-prefix = "service" }) }
  })])

  lifecycle {
    precondition {
      condition     = length(local.auth_modes) > 0
      error_message = "No authenticated caller mode: set user_jwks_url (with user_issuer and user_audience) and/or trusted_callers = true. This stack never runs the service anonymously."
    }
    precondition {
      condition     = !local.user_tokens || (var.user_issuer != "" && var.user_audience != "")
      error_message = "user_jwks_url needs user_issuer and user_audience."
    }
  }
}

resource "aws_ecs_service" "service" {
  name                              = var.name
  cluster                           = aws_ecs_cluster.this.id
  task_definition                   = aws_ecs_task_definition.service.arn
  desired_count                     = var.service_enabled ? var.tasks_min : 0
  launch_type                       = "FARGATE"
  platform_version                  = "LATEST"
  health_check_grace_period_seconds = 30
  enable_execute_command            = false
  propagate_tags                    = "SERVICE"
  wait_for_steady_state             = false

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = local.private_subnet_ids
    security_groups  = [aws_security_group.service.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.service.arn
    container_name   = local.container_name
    container_port   = local.container_port
  }

  # Autoscaling owns the task count once the service exists (service_enabled moves its bounds).
  lifecycle {
    ignore_changes = [desired_count]
  }

  depends_on = [aws_lb_listener.https, aws_efs_mount_target.keys, aws_iam_role_policy.execution, aws_efs_file_system_policy.keys]
}

# --- Autoscaling: on CPU, and on ALB requests per task ---------------------------------------------------

resource "aws_appautoscaling_target" "service" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.service.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.service_enabled ? var.tasks_min : 0
  max_capacity       = var.service_enabled ? var.tasks_max : 0
}

resource "aws_appautoscaling_policy" "cpu" {
  name               = "${var.name}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.service.service_namespace
  resource_id        = aws_appautoscaling_target.service.resource_id
  scalable_dimension = aws_appautoscaling_target.service.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.cpu_target_percent
    scale_out_cooldown = 60
    scale_in_cooldown  = 300
    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_appautoscaling_policy" "requests" {
  name               = "${var.name}-requests"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.service.service_namespace
  resource_id        = aws_appautoscaling_target.service.resource_id
  scalable_dimension = aws_appautoscaling_target.service.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.requests_per_target
    scale_out_cooldown = 60
    scale_in_cooldown  = 300
    predefined_metric_specification {
      predefined_metric_type = "ALBRequestCountPerTarget"
      resource_label         = "${aws_lb.service.arn_suffix}/${aws_lb_target_group.service.arn_suffix}"
    }
  }
}
