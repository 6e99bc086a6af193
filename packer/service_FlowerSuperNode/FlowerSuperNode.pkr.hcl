# Flower SuperNode appliance, one-apps style. Built by one-apps' Makefile (`make service_FlowerSuperNode`
# with this directory linked or copied into one-apps' packer/, see packer/README.md) or by the same
# `packer build` from this tree, run in the one-apps root either way: the base image and the
# one-apps framework are one-apps files named relative to it, as its own services name them.
# Boots export/ubuntu2404.qcow2 with a build-time context CD, installs flower-ctx through
# packer/scripts/provision.sh (the single install path), puts the one-apps service manager and the
# flower-ctx hook in place and runs `service install`. configure and bootstrap never run here:
# net-90 is only moved into place; they run at each boot.

source "null" "prepare" {
  communicator = "none"
}

# On the build host: the context CD from gen_context, and a tarball of the flower-ctx tree (its
# committed state), found from this directory without any variable (see ./prepare).
build {
  name    = "prepare"
  sources = ["source.null.prepare"]

  provisioner "shell-local" {
    inline = ["${path.root}/prepare ${var.input_dir} ${var.appliance_name} ${local.source_tar}"]
  }
}

source "qemu" "flower" {
  cpus        = 2
  memory      = var.memory
  accelerator = "kvm"

  iso_url      = local.base_image
  iso_checksum = "none"

  headless = var.headless

  disk_image       = true
  disk_cache       = "unsafe"
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  format           = "qcow2"
  disk_compression = false
  skip_resize_disk = true

  output_directory = var.output_dir

  qemuargs = [
    ["-serial", "stdio"],
    ["-cpu", "host"],
    ["-cdrom", local.context_iso],
    # The MAC must equal ETH0_MAC of gen_context.
    ["-netdev", "user,id=net0,hostfwd=tcp::{{ .SSHHostPort }}-:22"],
    ["-device", "virtio-net-pci,netdev=net0,mac=00:11:22:33:44:55"],
  ]

  ssh_username     = "root"
  ssh_password     = "opennebula"
  ssh_wait_timeout = "900s"
  shutdown_command = "poweroff"
  vm_name          = var.appliance_name
}

build {
  name    = "appliance"
  sources = ["source.qemu.flower"]

  # The flower-ctx tree first: the build's scripts (packer/scripts) come from it.
  provisioner "file" {
    source      = local.source_tar
    destination = "/tmp/flower-ctx.tar.gz"
  }

  # Undo the build-time SSH settings of gen_context's start script.
  provisioner "shell" {
    inline_shebang = "/bin/bash -e"
    inline = [
      "rm -rf ${local.vm_src} && install -d -m 0755 ${local.vm_src}",
      "tar -C ${local.vm_src} -xzf /tmp/flower-ctx.tar.gz && rm -f /tmp/flower-ctx.tar.gz",
      "bash ${local.vm_src}/packer/scripts/81-configure-ssh.sh",
    ]
  }

  provisioner "shell" {
    inline_shebang = "/bin/bash -e"
    inline = [
      "install -o 0 -g 0 -m u=rwx,g=rx,o= -d /etc/one-appliance /etc/one-appliance/service.d /etc/one-appliance/lib",
      "install -o 0 -g 0 -m u=rwx,g=rx,o=rx -d /opt/one-appliance /opt/one-appliance/bin",
    ]
  }

  # The one-apps framework, from the one-apps root.
  provisioner "file" {
    sources = [
      "appliances/scripts/net-90-service-appliance",
      "appliances/scripts/net-99-report-ready",
    ]
    destination = "/etc/one-appliance/"
  }

  provisioner "file" {
    source      = "appliances/service.sh"
    destination = "/etc/one-appliance/service"
  }

  provisioner "file" {
    sources = [
      "appliances/lib/common.sh",
      "appliances/lib/functions.sh",
    ]
    destination = "/etc/one-appliance/lib/"
  }

  # flower-ctx, Flower, the units, the hook (service.d/appliance.sh) and the links: provision.sh.
  provisioner "shell" {
    environment_vars = ["FLOWER_ROLE=${var.flower_role}"]
    inline_shebang   = "/bin/bash -e"
    inline           = ["bash ${local.vm_src}/packer/scripts/83-install-flower.sh"]
  }

  # net-90 (configure + bootstrap at each boot) and the one-apps net-99 (READY only after
  # bootstrap_success) go in place last.
  provisioner "shell" {
    inline_shebang = "/bin/bash -e"
    inline         = ["bash ${local.vm_src}/packer/scripts/82-configure-context.sh"]
  }

  provisioner "shell" {
    inline_shebang = "/bin/bash -e"
    inline         = ["/etc/one-appliance/service install && sync"]
  }

  post-processor "shell-local" {
    execute_command = ["bash", "-c", "{{.Vars}} {{.Script}}"]
    environment_vars = [
      "OUTPUT_DIR=${var.output_dir}",
      "APPLIANCE_NAME=${var.appliance_name}",
    ]
    scripts = ["packer/postprocess.sh"]
  }

  post-processor "shell-local" {
    inline = ["rm -f ${local.source_tar}"]
  }
}
