# Secrets of the service, in Secrets Manager under the secrets CMK, injected by ECS into the containers'
# environment (never in the task definition in clear). Rotation procedures: infra/README.md.

# --- Redis password: two passwords, both valid on the Redis user; the secret holds the active one. -----
# Rotation replaces the inactive one and makes it active: running tasks keep working on the old one
# until they are replaced (the task definition pins the secret's version, so a new one rolls out).

resource "random_password" "redis" {
  for_each         = toset(["a", "b"])
  length           = 40
  special          = true
  override_special = "!&#$^<>-"
}

resource "aws_secretsmanager_secret" "redis_password" {
  #checkov:skip=CKV2_AWS_57:Rotated by Terraform (infra/README.md): the ElastiCache user and the secret must change in step, with both passwords valid while tasks roll; a rotation Lambda would change the password under running tasks.
  name                    = "${var.name}/redis-password"
  description             = "Password of the ElastiCache user ${var.name} (CONCURRENCY_REDIS_PASSWORD)"
  kms_key_id              = aws_kms_key.secrets.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "redis_password" {
  secret_id     = aws_secretsmanager_secret.redis_password.id
  secret_string = random_password.redis[var.redis_password_active].result
  # The Redis user accepts a new password before any task is given it.
  depends_on = [aws_elasticache_user.service]
}

# --- Trusted-caller credentials: the value is put by operators, never through Terraform. -------------
# Format name:secret,name:secret; one caller may have two secrets at once while it rotates.

resource "aws_secretsmanager_secret" "callers" {
  #checkov:skip=CKV2_AWS_57:Each caller's secret is shared with that caller's backend; operators rotate it with both values valid at once (infra/README.md), which a rotation Lambda cannot coordinate.
  count                   = var.trusted_callers ? 1 : 0
  name                    = "${var.name}/callers"
  description             = "Trusted caller credentials name:secret,... (CONCURRENCY_CALLERS); value put by operators"
  kms_key_id              = aws_kms_key.secrets.arn
  recovery_window_in_days = 7
}

# --- Operator token for the session-management routes. ------------------------------------------------

resource "random_password" "admin_token" {
  count   = var.admin_token ? 1 : 0
  length  = 48
  special = false
}

resource "aws_secretsmanager_secret" "admin_token" {
  #checkov:skip=CKV2_AWS_57:Rotated by replacing random_password.admin_token with Terraform (infra/README.md), which also rolls the tasks; a rotation Lambda would not restart them.
  count                   = var.admin_token ? 1 : 0
  name                    = "${var.name}/admin-token"
  description             = "Operator token of the session-management routes (CONCURRENCY_ADMIN_TOKEN)"
  kms_key_id              = aws_kms_key.secrets.arn
  recovery_window_in_days = 7
}

resource "aws_secretsmanager_secret_version" "admin_token" {
  count         = var.admin_token ? 1 : 0
  secret_id     = aws_secretsmanager_secret.admin_token[0].id
  secret_string = random_password.admin_token[0].result
}

locals {
  # ECS reads a secret when a task starts; a valueFrom naming the version makes a new version a new
  # task definition, so Terraform rolls the tasks onto it. (ARN:json-key:version-stage:version-id)
  service_secrets = concat(
    [{
      name      = "CONCURRENCY_REDIS_PASSWORD"
      valueFrom = "${aws_secretsmanager_secret.redis_password.arn}:::${aws_secretsmanager_secret_version.redis_password.version_id}"
    }],
    var.trusted_callers ? [{ name = "CONCURRENCY_CALLERS", valueFrom = aws_secretsmanager_secret.callers[0].arn }] : [],
    var.admin_token ? [{
      name      = "CONCURRENCY_ADMIN_TOKEN"
      valueFrom = "${aws_secretsmanager_secret.admin_token[0].arn}:::${aws_secretsmanager_secret_version.admin_token[0].version_id}"
    }] : [],
  )
  secret_arns = concat(
    [aws_secretsmanager_secret.redis_password.arn],
    aws_secretsmanager_secret.callers[*].arn,
    aws_secretsmanager_secret.admin_token[*].arn,
  )
}
