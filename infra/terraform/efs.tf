# The key directory: ONE EFS file system that every task mounts through one access point (as uid/gid 10001,
# rooted at /keys, created 0700). Service tasks mount it read-only (IAM: ClientMount only); the key
# maintenance task mounts it read-write (ClientMount + ClientWrite). TLS and IAM authorization on every
# mount; the file system policy refuses anything else.

resource "aws_efs_file_system" "keys" {
  creation_token   = "${var.name}-keys"
  encrypted        = true
  kms_key_id       = aws_kms_key.data.arn
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic"
  tags             = { Name = "${var.name}-keys" }
}

resource "aws_efs_backup_policy" "keys" {
  file_system_id = aws_efs_file_system.keys.id
  backup_policy {
    status = "ENABLED"
  }
}

resource "aws_efs_mount_target" "keys" {
  count           = length(local.private_subnet_ids)
  file_system_id  = aws_efs_file_system.keys.id
  subnet_id       = local.private_subnet_ids[count.index]
  security_groups = [aws_security_group.efs.id]
}

resource "aws_efs_access_point" "keys" {
  file_system_id = aws_efs_file_system.keys.id
  posix_user {
    uid = local.app_uid
    gid = local.app_uid
  }
  root_directory {
    path = "/keys"
    creation_info {
      owner_uid   = local.app_uid
      owner_gid   = local.app_uid
      permissions = "0700"
    }
  }
  tags = { Name = "${var.name}-keys" }
}

data "aws_iam_policy_document" "efs_keys" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    resources = [aws_efs_file_system.keys.arn]
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
  statement {
    sid     = "DenyMountsOutsideTheAccessPoint"
    effect  = "Deny"
    actions = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite", "elasticfilesystem:ClientRootAccess"]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    resources = [aws_efs_file_system.keys.arn]
    condition {
      test     = "StringNotEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.keys.arn]
    }
  }
  statement {
    sid     = "ServiceTasksReadOnly"
    actions = ["elasticfilesystem:ClientMount"]
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.service_task.arn]
    }
    resources = [aws_efs_file_system.keys.arn]
    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.keys.arn]
    }
  }
  statement {
    sid     = "KeyTaskReadWrite"
    actions = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.keys_task.arn]
    }
    resources = [aws_efs_file_system.keys.arn]
    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.keys.arn]
    }
  }
}

resource "aws_efs_file_system_policy" "keys" {
  file_system_id = aws_efs_file_system.keys.id
  policy         = data.aws_iam_policy_document.efs_keys.json
}
