variable "name" {
  type    = string
  default = "concurrency-service"
}
variable "region" {
  type    = string
  default = "us-east-1"
}
variable "vpc_id" { type = string }
variable "public_subnet_ids" { type = list(string) }
variable "private_subnet_ids" { type = list(string) }
variable "certificate_arn" { type = string }
variable "image" {
  type        = string
  description = "the image built from infra/Dockerfile"
}
variable "tasks" {
  type    = number
  default = 2
}
variable "task_cpu" {
  type    = number
  default = 1024
}
variable "task_memory" {
  type    = number
  default = 2048
}
variable "workers_per_task" {
  type    = number
  default = 1
}
variable "max_streams" {
  type    = number
  default = 3
}
variable "buckets" {
  type        = number
  default     = 65536
  description = "users hashed per Redis hash; aim for a handful of users per bucket at peak (docs/design.md)"
}
variable "redis_node_type" {
  type    = string
  default = "cache.r7g.large"
}
variable "redis_shards" {
  type    = number
  default = 3
}
