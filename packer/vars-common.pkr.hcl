# Variables shared by the Flower appliance builds (symlinked into each service directory, as
# one-apps does). one-apps' packer/build.sh passes appliance_name, distro, version, input_dir,
# output_dir, headless and arch; the rest say where the one-apps checkout and flower-ctx are.

packer {
  required_plugins {
    qemu = {
      source  = "github.com/hashicorp/qemu"
      version = "1.1.0"
    }
  }
}

variable "input_dir" {
  type        = string
  description = "This service directory (one-apps passes packer/<name>)."
}

variable "output_dir" {
  type        = string
  description = "Where the built qcow2 goes."
}

variable "headless" {
  type    = bool
  default = true
}

variable "version" {
  type    = string
  default = ""
}

variable "distro" {
  type    = string
  default = "ubuntu2404"
}

variable "arch" {
  type    = string
  default = "x86_64"
}

variable "one_apps_dir" {
  type        = string
  default     = "."
  description = "A one-apps checkout: appliances/ (service.sh, lib, net-90/net-99) and export/<distro>.qcow2."
}

variable "flower_ctx_src" {
  type        = string
  default     = ""
  description = "The flower-ctx source tree; empty: the repository these files are in."
}

variable "memory" {
  type    = number
  default = 2048
}

locals {
  base_image = "${var.one_apps_dir}/export/${var.distro}.qcow2"
  src        = var.flower_ctx_src != "" ? var.flower_ctx_src : abspath("${path.root}/../..")
  scripts    = abspath("${path.root}/../scripts")
  context    = "${var.input_dir}/${var.appliance_name}-context.iso"
  src_tar    = "${var.input_dir}/${var.appliance_name}-flower-ctx.tar.gz"
}
