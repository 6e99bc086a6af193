# The role this image is built for: fixed per image, read by the one-apps hook.

variable "appliance_name" {
  type    = string
  default = "flower_supernode"
}

variable "flower_role" {
  type    = string
  default = "supernode"

  validation {
    condition     = var.flower_role == "supernode"
    error_message = "The flower_supernode build makes a supernode image only."
  }
}
