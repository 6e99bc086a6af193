# The variables one-apps' packer/build.sh passes to every build (-var appliance_name, distro, version,
# input_dir, output_dir, headless, arch), declared as one-apps' own packer/vars-common.pkr.hcl
# declares them, plus its command_format and arch_vars, and the qemu plugin pinned the same way.
# Each service directory links this file as vars-common.pkr.hcl, as one-apps' services do: copied
# into a one-apps checkout the link finds one-apps' file instead, so the templates may rely on
# these names only (tests/test_packer.py checks both). Nothing here chooses what is built: with
# `make service_X`, distro is "service_X", never a base distribution.

packer {
  required_plugins {
    qemu = {
      source  = "github.com/hashicorp/qemu"
      version = "1.1.0"
    }
  }
}

variable "appliance_name" {
  type        = string
  description = "The build's name, service_<Name>: the VM name and the exported image's file name."
}

variable "distro" {
  type        = string
  description = "What build.sh passes (the service name for services); not used by these builds."
}

variable "version" {
  type        = string
  description = "What build.sh passes (digits after the name; none for these services)."
}

variable "arch" {
  type    = string
  default = "x86_64"
}

variable "command_format" {
  type    = string
  default = "bash {{.Path}}"
}

variable "input_dir" {
  type        = string
  description = "This service directory (build.sh passes packer/<name>)."
}

variable "output_dir" {
  type        = string
  description = "The working directory of the build (build.sh passes build/<name>)."
}

variable "headless" {
  type    = bool
  default = true
}

variable "arch_vars" {
  type        = map(map(string))
  default     = {}
  description = "Per-architecture qemu settings in one-apps; these builds are x86_64 only."
}
