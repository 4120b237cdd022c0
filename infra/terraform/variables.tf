# Every variable is described in infra/README.md ("Variables").

# --- General -------------------------------------------------------------------------------------------

variable "name" {
  type        = string
  default     = "concurrency-service"
  description = "Prefix of every resource name."
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}$", var.name))
    error_message = "name: 2-23 characters, lower-case letters, digits and '-', starting with a letter (it prefixes names that AWS limits to 32-40 characters)."
  }
}

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "AWS region."
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Tags added to every resource (next to Service and ManagedBy)."
}

# --- Network -------------------------------------------------------------------------------------------

variable "create_vpc" {
  type        = bool
  default     = true
  description = "Create a VPC (public and private subnets in az_count zones, NAT, flow logs); false: use vpc_id and the subnet ids below."
}

variable "vpc_cidr" {
  type        = string
  default     = "10.40.0.0/16"
  description = "CIDR of the VPC made when create_vpc is true; subnets are /20s of it."
  validation {
    condition     = can(cidrsubnet(var.vpc_cidr, 4, 15))
    error_message = "vpc_cidr must be an IPv4 CIDR of /16 to /24 (it is cut into 16 subnets)."
  }
}

variable "az_count" {
  type        = number
  default     = 2
  description = "Availability zones used when create_vpc is true (at least 2)."
  validation {
    condition     = var.az_count >= 2 && var.az_count <= 6
    error_message = "az_count: 2 to 6."
  }
}

variable "availability_zones" {
  type        = list(string)
  default     = []
  description = "Zones for the VPC made when create_vpc is true (e.g. [\"us-east-1a\", \"us-east-1b\"]); empty: the first az_count zones of the region."
  validation {
    condition     = length(var.availability_zones) == 0 || (length(var.availability_zones) >= 2 && length(var.availability_zones) <= 6)
    error_message = "availability_zones: empty, or 2 to 6 zone names."
  }
}

variable "single_nat_gateway" {
  type        = bool
  default     = false
  description = "One NAT gateway for all zones (cheaper; a zone outage then cuts egress of the others). Default: one per zone."
}

variable "vpc_id" {
  type        = string
  default     = ""
  description = "Existing VPC (create_vpc = false)."
}

variable "public_subnet_ids" {
  type        = list(string)
  default     = []
  description = "Existing public subnets for the ALB, in 2 or more zones (create_vpc = false)."
}

variable "private_subnet_ids" {
  type        = list(string)
  default     = []
  description = "Existing private subnets with egress (NAT) for tasks, Redis and EFS, one per zone, 2 or more zones (create_vpc = false)."
}

# --- Edge: ALB, TLS, WAF ------------------------------------------------------------------------------

variable "certificate_arn" {
  type        = string
  description = "ACM certificate of domain_name for the HTTPS listener."
}

variable "domain_name" {
  type        = string
  default     = ""
  description = "Public name of the service (the certificate's); empty: the ALB's DNS name (then TLS names will not match)."
}

variable "route53_zone_id" {
  type        = string
  default     = ""
  description = "Hosted zone in which to create domain_name as an alias of the ALB; empty: manage DNS yourself."
}

variable "ssl_policy" {
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  description = "TLS policy of the HTTPS listener (TLS 1.3 and 1.2 with forward-secret AEAD ciphers)."
}

variable "allowed_ingress_cidrs" {
  type        = list(string)
  default     = ["0.0.0.0/0"]
  description = "Who may reach the ALB (players are on the internet)."
}

variable "alb_deletion_protection" {
  type        = bool
  default     = true
  description = "Deletion protection of the ALB (set false, apply, then destroy, to tear the stack down)."
}

variable "waf_rate_limit" {
  type        = number
  default     = 0
  description = "Requests per 5 minutes from one IP before WAF blocks it; 0: no rate rule (a Playback API calling for many players comes from few IPs)."
  validation {
    condition     = var.waf_rate_limit == 0 || var.waf_rate_limit >= 100
    error_message = "waf_rate_limit: 0 (off) or at least 100."
  }
}

variable "waf_block_anonymous_ips" {
  type        = bool
  default     = false
  description = "Block players behind VPNs, Tor and anonymising proxies (AWS anonymous IP list); default: count them only."
}

variable "access_log_retention_days" {
  type        = number
  default     = 365
  description = "Days the ALB access logs and VPC flow logs are kept in the log bucket."
  validation {
    condition     = var.access_log_retention_days >= 90
    error_message = "access_log_retention_days: at least 90 (logs move to Infrequent Access after 30 days)."
  }
}

# --- Service --------------------------------------------------------------------------------------------

variable "image" {
  type        = string
  description = "The image built from infra/Dockerfile, pushed to a registry (ECR: pull rights are granted for that repository only)."
}

variable "service_enabled" {
  type        = bool
  default     = true
  description = "Run the service tasks. false on the very first apply only: the key task must make the first signing key before the service can start (infra/README.md)."
}

variable "tasks_min" {
  type        = number
  default     = 2
  description = "Fewest service tasks (autoscaling floor); 2 or more keeps one per zone."
  validation {
    condition     = var.tasks_min >= 2
    error_message = "tasks_min: at least 2 (one task per zone)."
  }
}

variable "tasks_max" {
  type        = number
  default     = 20
  description = "Most service tasks (autoscaling ceiling)."
}

variable "task_cpu" {
  type        = number
  default     = 1024
  description = "Fargate CPU units of a service task (1024 = one vCPU)."
}

variable "task_memory" {
  type        = number
  default     = 2048
  description = "Fargate memory (MiB) of a service task, /tmp's tmpfs included."
}

variable "workers_per_task" {
  type        = number
  default     = 1
  description = "serve --workers: one worker process per vCPU."
}

variable "threads_per_worker" {
  type        = number
  default     = 8
  description = "serve --threads: requests a worker holds while others wait on Redis (docs/operations.md: 4-16)."
}

variable "tmp_size_mib" {
  type        = number
  default     = 64
  description = "Size of the tmpfs at /tmp, the only writable path of the container (read-only root file system)."
}

variable "cpu_target_percent" {
  type        = number
  default     = 60
  description = "Autoscaling target: average CPU utilisation of the service tasks."
}

variable "requests_per_target" {
  type        = number
  default     = 30000
  description = "Autoscaling target: ALB requests per task per minute (ALBRequestCountPerTarget)."
}

variable "log_retention_days" {
  type        = number
  default     = 365
  description = "Retention of the CloudWatch log groups (service, key task, Redis, WAF)."
  validation {
    condition     = contains([365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days: a CloudWatch retention of at least one year (365, 400, 545, 731, 1096, ...)."
  }
}

variable "max_streams" {
  type        = number
  default     = 3
  description = "CONCURRENCY_MAX_STREAMS: concurrent streams per account unless a plan or token claim says otherwise."
}

variable "session_ttl_seconds" {
  type        = number
  default     = 60
  description = "CONCURRENCY_SESSION_TTL: a session lives this long after its last heartbeat; tokens expire with it."
}

variable "keys_propagation_seconds" {
  type        = number
  default     = 90
  description = "CONCURRENCY_KEYS_PROPAGATION: upper bound on how late a task sees a change of the EFS key directory (NFS caches attributes up to 60 s, plus the reload poll and a margin)."
}

variable "extra_environment" {
  type        = map(string)
  default     = {}
  description = "More CONCURRENCY_* settings for the service and the key task (e.g. CONCURRENCY_PLAN_LIMITS). Not for secrets."
  validation {
    condition = alltrue([for k in keys(var.extra_environment) : startswith(k, "CONCURRENCY_") && !contains([
      # Set by this stack from its variables and resources:
      "CONCURRENCY_AUTH", "CONCURRENCY_USER_JWKS", "CONCURRENCY_USER_ISSUER", "CONCURRENCY_USER_AUDIENCE",
      "CONCURRENCY_REDIS_URL", "CONCURRENCY_REDIS_MODE", "CONCURRENCY_REDIS_USERNAME", "CONCURRENCY_KEYS_DIR",
      "CONCURRENCY_KEYS_PROPAGATION", "CONCURRENCY_MAX_STREAMS", "CONCURRENCY_SESSION_TTL",
      # Secrets (Secrets Manager only), a key outside the key directory, and anonymous mode:
      "CONCURRENCY_CALLERS", "CONCURRENCY_ADMIN_TOKEN", "CONCURRENCY_REDIS_PASSWORD", "CONCURRENCY_SIGNING_KEY_PEM",
      "CONCURRENCY_ALLOW_ANONYMOUS",
    ], k)])
    error_message = "extra_environment: CONCURRENCY_* names only, none that this stack sets itself (auth, Redis, keys, limits, TTL), no secret and no anonymous mode."
  }
}

# --- Who may act for a user (never anonymous) ---------------------------------------------------------

variable "user_jwks_url" {
  type        = string
  default     = ""
  description = "Identity provider's JWKS URL (https://): turns on user-token mode (CONCURRENCY_USER_JWKS)."
  validation {
    condition     = var.user_jwks_url == "" || startswith(var.user_jwks_url, "https://")
    error_message = "user_jwks_url must be an https:// URL (or empty)."
  }
}

variable "user_issuer" {
  type        = string
  default     = ""
  description = "Required iss of user tokens (CONCURRENCY_USER_ISSUER); required with user_jwks_url."
}

variable "user_audience" {
  type        = string
  default     = ""
  description = "Required aud of user tokens (CONCURRENCY_USER_AUDIENCE); required with user_jwks_url."
}

variable "trusted_callers" {
  type        = bool
  default     = false
  description = "Turn on trusted-caller mode: creates the caller-credential secret (CONCURRENCY_CALLERS), whose value you put (infra/README.md)."
}

variable "admin_token" {
  type        = bool
  default     = true
  description = "Generate an operator token for the session-management routes (CONCURRENCY_ADMIN_TOKEN) in Secrets Manager."
}

# --- Redis (ElastiCache) ------------------------------------------------------------------------------

variable "redis_engine" {
  type        = string
  default     = "redis"
  description = "redis or valkey (then set redis_engine_version and redis_parameter_group_name to match, e.g. 8.0 and default.valkey8.cluster.on)."
  validation {
    condition     = contains(["redis", "valkey"], var.redis_engine)
    error_message = "redis_engine: redis or valkey."
  }
}

variable "redis_engine_version" {
  type        = string
  default     = "7.1"
  description = "Engine version (7.x for redis)."
}

variable "redis_parameter_group_name" {
  type        = string
  default     = "default.redis7.cluster.on"
  description = "Parameter group; must have cluster mode on."
}

variable "redis_node_type" {
  type        = string
  default     = "cache.r7g.large"
  description = "Node type of every shard's primary and replicas."
}

variable "redis_shards" {
  type        = number
  default     = 3
  description = "Shards (node groups); users spread evenly over them."
}

variable "redis_replicas_per_shard" {
  type        = number
  default     = 1
  description = "Replicas per shard (at least 1: automatic failover, multi-AZ)."
  validation {
    condition     = var.redis_replicas_per_shard >= 1 && var.redis_replicas_per_shard <= 5
    error_message = "redis_replicas_per_shard: 1 to 5."
  }
}

variable "redis_maintenance_window" {
  type        = string
  default     = "sun:05:00-sun:06:00"
  description = "Weekly maintenance window of the cluster (UTC)."
}

variable "redis_password_active" {
  type        = string
  default     = "a"
  description = "Which of the Redis user's two passwords the service uses (a or b); flip it to rotate (infra/README.md)."
  validation {
    condition     = contains(["a", "b"], var.redis_password_active)
    error_message = "redis_password_active: a or b."
  }
}

# --- Signing keys ---------------------------------------------------------------------------------------

variable "key_rotation_days" {
  type        = number
  default     = 30
  description = "keys maintain --rotate-after <N>d: rotate when the active signing key is older than this."
  validation {
    condition     = var.key_rotation_days >= 1 && floor(var.key_rotation_days) == var.key_rotation_days
    error_message = "key_rotation_days: a whole number of days, at least 1."
  }
}

variable "key_maintenance_schedule" {
  type        = string
  default     = "rate(1 hour)"
  description = "When EventBridge Scheduler runs `keys maintain` (rate() or cron() expression, UTC)."
}
