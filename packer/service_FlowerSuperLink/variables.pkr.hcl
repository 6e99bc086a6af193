# What is fixed for this image: its role, the base image it starts from, and where the build's own
# files go. Nothing is derived from the distro variable (make passes the service name there).

variable "flower_role" {
  type    = string
  default = "superlink"

  validation {
    condition     = var.flower_role == "superlink"
    error_message = "The service_FlowerSuperLink build makes a superlink image only."
  }
}

variable "memory" {
  type    = number
  default = 2048
}

locals {
  # one-apps' Ubuntu 24.04 image (make packer-ubuntu2404), relative to the one-apps root where
  # build.sh runs packer, as one-apps' own services name theirs. x86_64 only: another arch is an
  # unknown key here, and the build stops.
  base_images = {
    x86_64 = "export/ubuntu2404.qcow2"
  }
  base_image = local.base_images[var.arch]

  # Made by ./prepare on the build host: the build-time context CD (where build.sh deletes it
  # afterwards) and the flower-ctx source, next to the build's working directory (git-ignored
  # build/ in one-apps and in flower-ctx; removed by the last post-processor).
  context_iso = "${var.input_dir}/${var.appliance_name}-context.iso"
  source_tar  = "${var.output_dir}-flower-ctx.tar.gz"

  # The flower-ctx tree inside the build VM, unpacked from source_tar.
  vm_src = "/usr/local/src/flower-ctx"
}
