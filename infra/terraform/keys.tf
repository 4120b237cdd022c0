# Key maintenance: the same image runs `keys maintain` on the shared key directory, mounted read-write, once
# an hour (EventBridge Scheduler -> ECS RunTask). The command is idempotent: it makes a key if there is
# none, prunes retired keys, publishes a next key, and rotates when the active key is older than
# key_rotation_days. Run it once by hand before the first deployment (infra/README.md): the service refuses
# to start without a signing key.

locals {
  keys_command = ["keys", "maintain", "--dir", local.keys_dir, "--rotate-after", "${var.key_rotation_days}d"]
}

resource "aws_ecs_task_definition" "keys" {
  family                   = "${var.name}-keys"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.keys_task.arn

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
    name             = "keys-maintain"
    command          = local.keys_command
    mountPoints      = [{ sourceVolume = "keys", containerPath = local.keys_dir, readOnly = false }]
    logConfiguration = { logDriver = "awslogs", options = merge(local.log_options, { awslogs-stream-prefix = "keys" }) }
  })])
}

resource "aws_scheduler_schedule_group" "keys" {
  name = var.name
}

resource "aws_scheduler_schedule" "keys" {
  name                = "${var.name}-keys-maintain"
  group_name          = aws_scheduler_schedule_group.keys.name
  description         = "concurrency-service ${join(" ", local.keys_command)}"
  schedule_expression = var.key_maintenance_schedule
  kms_key_arn         = aws_kms_key.data.arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_ecs_cluster.this.arn
    role_arn = aws_iam_role.scheduler.arn

    ecs_parameters {
      task_definition_arn     = aws_ecs_task_definition.keys.arn
      launch_type             = "FARGATE"
      task_count              = 1
      enable_ecs_managed_tags = true
      propagate_tags          = "TASK_DEFINITION"

      network_configuration {
        subnets          = local.private_subnet_ids
        security_groups  = [aws_security_group.keys_task.id]
        assign_public_ip = false
      }
    }

    # A missed run is made up by the next one (the command is idempotent); retry briefly, then wait.
    retry_policy {
      maximum_event_age_in_seconds = 1800
      maximum_retry_attempts       = 3
    }
  }

  depends_on = [aws_efs_mount_target.keys, aws_iam_role_policy.scheduler]
}
