# One security group per role; every rule names its peer. Rules are separate resources so that groups can
# refer to each other (ALB <-> service) without a cycle.

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "ALB of ${var.name}: HTTPS (and HTTP that only redirects) from the allowed CIDRs"
  vpc_id      = local.vpc_id
  tags        = { Name = "${var.name}-alb" }
}

resource "aws_security_group" "service" {
  name        = "${var.name}-service"
  description = "Service tasks of ${var.name}: port ${local.container_port} from the ALB only"
  vpc_id      = local.vpc_id
  tags        = { Name = "${var.name}-service" }
}

resource "aws_security_group" "keys_task" {
  #checkov:skip=CKV2_AWS_5:Attached to the key maintenance task by aws_scheduler_schedule.keys (ecs_parameters.network_configuration) and by the run-task command, links checkov does not follow.
  name        = "${var.name}-keys-task"
  description = "Key maintenance task of ${var.name}: no ingress; EFS and AWS APIs out"
  vpc_id      = local.vpc_id
  tags        = { Name = "${var.name}-keys-task" }
}

resource "aws_security_group" "redis" {
  name        = "${var.name}-redis"
  description = "ElastiCache of ${var.name}: port 6379 from the service tasks only"
  vpc_id      = local.vpc_id
  tags        = { Name = "${var.name}-redis" }
}

resource "aws_security_group" "efs" {
  name        = "${var.name}-efs"
  description = "EFS key directory of ${var.name}: NFS from the service and key tasks only"
  vpc_id      = local.vpc_id
  tags        = { Name = "${var.name}-efs" }
}

# --- ALB ---

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each          = toset(var.allowed_ingress_cidrs)
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from players and callers"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  #checkov:skip=CKV_AWS_260:Port 80 only answers a 301 redirect to HTTPS (aws_lb_listener.http); nothing is served over plain HTTP.
  for_each          = toset(var.allowed_ingress_cidrs)
  security_group_id = aws_security_group.alb.id
  description       = "HTTP, answered only by a redirect to HTTPS"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

resource "aws_vpc_security_group_egress_rule" "alb_to_service" {
  security_group_id            = aws_security_group.alb.id
  description                  = "To the service tasks"
  referenced_security_group_id = aws_security_group.service.id
  ip_protocol                  = "tcp"
  from_port                    = local.container_port
  to_port                      = local.container_port
}

# --- Service tasks ---

resource "aws_vpc_security_group_ingress_rule" "service_from_alb" {
  security_group_id            = aws_security_group.service.id
  description                  = "From the ALB"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = local.container_port
  to_port                      = local.container_port
}

resource "aws_vpc_security_group_egress_rule" "service_to_redis" {
  security_group_id            = aws_security_group.service.id
  description                  = "To ElastiCache (TLS)"
  referenced_security_group_id = aws_security_group.redis.id
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
}

resource "aws_vpc_security_group_egress_rule" "service_to_efs" {
  security_group_id            = aws_security_group.service.id
  description                  = "To the EFS key directory (NFS over TLS)"
  referenced_security_group_id = aws_security_group.efs.id
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
}

resource "aws_vpc_security_group_egress_rule" "service_https" {
  security_group_id = aws_security_group.service.id
  description       = "HTTPS to AWS APIs (ECR, Secrets Manager, CloudWatch Logs) and the identity provider's JWKS"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# --- Key maintenance task ---

resource "aws_vpc_security_group_egress_rule" "keys_task_to_efs" {
  security_group_id            = aws_security_group.keys_task.id
  description                  = "To the EFS key directory (NFS over TLS)"
  referenced_security_group_id = aws_security_group.efs.id
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
}

resource "aws_vpc_security_group_egress_rule" "keys_task_https" {
  security_group_id = aws_security_group.keys_task.id
  description       = "HTTPS to AWS APIs (ECR, Secrets Manager, CloudWatch Logs)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# --- Redis and EFS: ingress only from their clients, no egress ---

resource "aws_vpc_security_group_ingress_rule" "redis_from_service" {
  security_group_id            = aws_security_group.redis.id
  description                  = "From the service tasks"
  referenced_security_group_id = aws_security_group.service.id
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
}

resource "aws_vpc_security_group_ingress_rule" "efs_from_service" {
  security_group_id            = aws_security_group.efs.id
  description                  = "NFS from the service tasks (mounted read-only)"
  referenced_security_group_id = aws_security_group.service.id
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
}

resource "aws_vpc_security_group_ingress_rule" "efs_from_keys_task" {
  security_group_id            = aws_security_group.efs.id
  description                  = "NFS from the key maintenance task (read-write)"
  referenced_security_group_id = aws_security_group.keys_task.id
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
}
