output "url" {
  value = "https://${aws_lb.service.dns_name}"
}
output "redis_configuration_endpoint" {
  value = aws_elasticache_replication_group.sessions.configuration_endpoint_address
}
output "signing_key_secret_arn" {
  value = aws_secretsmanager_secret.signing_key.arn
}
