# The role this image is built for: fixed per image, read by the one-apps hook.

variable "appliance_name" {
  type    = string
  default = "flower_superlink"
}

variable "flower_role" {
  type    = string
  default = "superlink"

  validation {
    condition     = var.flower_role == "superlink"
    error_message = "The flower_superlink build makes a superlink image only."
  }
}
