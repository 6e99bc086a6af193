# Flower superlink appliance, one-apps style: boot the one-apps Ubuntu 24.04 base image with a
# build-time context CD, install through packer/scripts/provision.sh (the single install path),
# put the one-apps service manager and the flower-ctx hook in place, run `service install`.
# configure and bootstrap never run here: net-90 is only moved into place, they run at each boot.

source "null" "context" {
  communicator = "none"
}

# The build-time context CD and a tarball of the flower-ctx tree (its committed state).
build {
  name    = "prepare"
  sources = ["source.null.context"]

  provisioner "shell-local" {
    inline = [
      "mkdir -p ${var.input_dir}/context",
      "${path.root}/gen_context > ${var.input_dir}/context/context.sh",
      "mkisofs -o ${local.context} -V CONTEXT -J -R ${var.input_dir}/context",
      "git -C ${local.src} archive --format=tar.gz -o ${abspath(local.src_tar)} HEAD",
    ]
  }
}

source "qemu" "flower_superlink" {
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
    ["-cdrom", local.context],
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
  sources = ["source.qemu.flower_superlink"]

  # Undo the build-time SSH settings of gen_context's start script.
  provisioner "shell" {
    scripts = ["${local.scripts}/81-configure-ssh.sh"]
  }

  provisioner "shell" {
    inline_shebang = "/bin/bash -e"
    inline = [
      "install -o 0 -g 0 -m u=rwx,g=rx,o= -d /etc/one-appliance /etc/one-appliance/service.d /etc/one-appliance/lib",
      "install -o 0 -g 0 -m u=rwx,g=rx,o=rx -d /opt/one-appliance /opt/one-appliance/bin",
    ]
  }

  # The one-apps framework, from the one-apps checkout.
  provisioner "file" {
    sources = [
      "${var.one_apps_dir}/appliances/scripts/net-90-service-appliance",
      "${var.one_apps_dir}/appliances/scripts/net-99-report-ready",
    ]
    destination = "/etc/one-appliance/"
  }

  provisioner "file" {
    source      = "${var.one_apps_dir}/appliances/service.sh"
    destination = "/etc/one-appliance/service"
  }

  provisioner "file" {
    sources = [
      "${var.one_apps_dir}/appliances/lib/common.sh",
      "${var.one_apps_dir}/appliances/lib/functions.sh",
    ]
    destination = "/etc/one-appliance/lib/"
  }

  # flower-ctx, Flower, the units and the hook (service.d/appliance.sh): one script does it all.
  provisioner "file" {
    source      = local.src_tar
    destination = "/tmp/flower-ctx.tar.gz"
  }

  provisioner "shell" {
    environment_vars = ["FLOWER_ROLE=${var.flower_role}"]
    scripts          = ["${local.scripts}/83-install-flower.sh"]
  }

  # net-90 (configure + bootstrap at each boot) and the one-apps net-99 (READY only after
  # bootstrap_success) go in place last.
  provisioner "shell" {
    scripts = ["${local.scripts}/82-configure-context.sh"]
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
    scripts = ["${var.one_apps_dir}/packer/postprocess.sh"]
  }
}
