# Two customer managed keys, rotated yearly by KMS:
# - secrets: Secrets Manager only; the task execution role may decrypt with it through Secrets Manager.
# - data: everything else at rest (log groups, ElastiCache, EFS, the key-maintenance schedule).
# Both policies leave access to IAM policies of this account (the first statement); the data key also lets
# CloudWatch Logs use it for this account's log groups.

locals {
  kms_account_root_statement = {
    Sid       = "AccountAdministersKeyThroughIam"
    Effect    = "Allow"
    Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
    Action    = "kms:*"
    Resource  = "*"
  }
}

resource "aws_kms_key" "secrets" {
  description             = "${var.name}: Secrets Manager secrets"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [local.kms_account_root_statement]
  })
}

resource "aws_kms_alias" "secrets" {
  name          = "alias/${var.name}/secrets"
  target_key_id = aws_kms_key.secrets.key_id
}

resource "aws_kms_key" "data" {
  description             = "${var.name}: logs, ElastiCache, EFS and schedules at rest"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      local.kms_account_root_statement,
      {
        Sid       = "CloudWatchLogsOfThisAccount"
        Effect    = "Allow"
        Principal = { Service = "logs.${local.region}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"
          }
        }
      },
    ]
  })
}

resource "aws_kms_alias" "data" {
  name          = "alias/${var.name}/data"
  target_key_id = aws_kms_key.data.key_id
}
