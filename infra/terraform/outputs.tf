output "service_url" {
  description = "Base URL of the service."
  value       = "https://${local.service_host}"
}

output "jwks_url" {
  description = "Where verifiers (CDNs, licence servers) fetch the session-token keys."
  value       = "https://${local.service_host}/.well-known/jwks.json"
}

output "alb_dns_name" {
  description = "DNS name of the ALB (point domain_name here when Route 53 is not managed by this stack)."
  value       = aws_lb.service.dns_name
}

output "redis_configuration_endpoint" {
  description = "Configuration endpoint of the ElastiCache cluster (TLS, port 6379)."
  value       = aws_elasticache_replication_group.sessions.configuration_endpoint_address
}

output "redis_username" {
  description = "RBAC user the service logs in as."
  value       = aws_elasticache_user.service.user_name
}

output "efs_file_system_id" {
  description = "EFS file system of the key directory."
  value       = aws_efs_file_system.keys.id
}

output "efs_access_point_id" {
  description = "Access point every task mounts the key directory through."
  value       = aws_efs_access_point.keys.id
}

output "secret_names" {
  description = "Secrets Manager secrets of the service (callers: its value is yours to put)."
  value = {
    redis_password = aws_secretsmanager_secret.redis_password.name
    callers        = one(aws_secretsmanager_secret.callers[*].name)
    admin_token    = one(aws_secretsmanager_secret.admin_token[*].name)
  }
}

output "ecs_cluster_name" {
  description = "ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "ecs_service_name" {
  description = "ECS service."
  value       = aws_ecs_service.service.name
}

output "keys_task_definition" {
  description = "Task definition of `keys maintain` (run by the schedule hourly, and once by hand before the first deployment)."
  value       = aws_ecs_task_definition.keys.arn
}

output "keys_run_task_command" {
  description = "The AWS CLI command that runs `keys maintain` once now."
  value = join(" ", [
    "aws ecs run-task --region ${local.region} --cluster ${aws_ecs_cluster.this.name}",
    "--task-definition ${aws_ecs_task_definition.keys.arn} --launch-type FARGATE",
    "--network-configuration 'awsvpcConfiguration={subnets=[${join(",", local.private_subnet_ids)}],securityGroups=[${aws_security_group.keys_task.id}],assignPublicIp=DISABLED}'",
  ])
}
