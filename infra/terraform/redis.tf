# Live sessions: an ElastiCache replication group in cluster mode (every script touches one hash-tagged key,
# so users spread over the shards), one replica per shard in another zone with automatic failover, TLS
# required, encrypted at rest with the data CMK, and RBAC: the service logs in as its own user, allowed
# only the commands it sends, on its own keys.

locals {
  # The Redis commands the service sends and its scripts call, on its own key prefix, and nothing else:
  # docs/operations.md ("Least-privilege Redis") says why each is there. infra/redis/users.acl holds the
  # same rules; tests/test_infra.py checks that the three agree.
  redis_access_string = "on ~c:* -@all +evalsha +eval +ping +cluster|slots +command +asking +time +hget +hgetall +hset +hdel +pttl +pexpire"
  redis_user_engine   = var.redis_engine
}

resource "aws_elasticache_subnet_group" "sessions" {
  name        = "${var.name}-sessions"
  description = "Private subnets of ${var.name}"
  subnet_ids  = local.private_subnet_ids
}

# Every user group must hold a user named "default"; this one is switched off and can do nothing.
resource "random_password" "redis_default_user" {
  length  = 40
  special = false
}

resource "aws_elasticache_user" "default" {
  user_id       = "${var.name}-default"
  user_name     = "default"
  access_string = "off -@all"
  engine        = local.redis_user_engine
  authentication_mode {
    type      = "password"
    passwords = [random_password.redis_default_user.result]
  }
}

resource "aws_elasticache_user" "service" {
  user_id       = var.name
  user_name     = var.name
  access_string = local.redis_access_string
  engine        = local.redis_user_engine
  authentication_mode {
    type      = "password"
    passwords = [random_password.redis["a"].result, random_password.redis["b"].result]
  }
}

resource "aws_elasticache_user_group" "sessions" {
  user_group_id = var.name
  engine        = local.redis_user_engine
  user_ids      = [aws_elasticache_user.default.user_id, aws_elasticache_user.service.user_id]
}

resource "aws_elasticache_replication_group" "sessions" {
  replication_group_id       = "${var.name}-sessions"
  description                = "Live streaming sessions of ${var.name}"
  engine                     = var.redis_engine
  engine_version             = var.redis_engine_version
  parameter_group_name       = var.redis_parameter_group_name
  node_type                  = var.redis_node_type
  port                       = 6379
  cluster_mode               = "enabled"
  num_node_groups            = var.redis_shards
  replicas_per_node_group    = var.redis_replicas_per_shard
  automatic_failover_enabled = true
  multi_az_enabled           = true
  subnet_group_name          = aws_elasticache_subnet_group.sessions.name
  security_group_ids         = [aws_security_group.redis.id]
  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.data.arn
  transit_encryption_enabled = true
  transit_encryption_mode    = "required"
  user_group_ids             = [aws_elasticache_user_group.sessions.id]
  auto_minor_version_upgrade = true
  maintenance_window         = var.redis_maintenance_window
  # No snapshots: sessions live one TTL (60 s), so a snapshot is stale before it could be restored, and
  # after a total loss each session resumes from its token at its next heartbeat (CONCURRENCY_RESUME).
  # Snapshots would only add fork latency on the nodes.
  snapshot_retention_limit = 0
  apply_immediately        = false

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.redis.name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "slow-log"
  }

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.redis.name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "engine-log"
  }
}
