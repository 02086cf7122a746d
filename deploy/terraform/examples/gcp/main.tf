# One GPU instance per Google Cloud region, each registered as a Meridian region and
# running the region agent under systemd. The agent credential goes from the control
# plane into Secret Manager, readable only by that region's service account; the
# instance fetches it when the agent starts. It never appears in instance metadata.

locals {
  state_dir       = abspath(var.state_dir != "" ? var.state_dir : "${path.root}/.meridian")
  credential_path = "/etc/meridian/agent-credential"
  worker_tag      = "meridian-worker"
}

module "region" {
  source   = "../../modules/region"
  for_each = var.regions

  name                  = each.key
  cloud_provider        = "gcp"
  lat                   = each.value.lat
  lon                   = each.value.lon
  gpu_type              = each.value.gpu_type
  gpu_count             = each.value.gpu_count
  control_plane_url     = var.control_plane_url
  admin_token_file      = var.admin_token_file
  credential_file       = "${local.state_dir}/${each.key}/agent-credential"
  meridian_command      = var.meridian_command
  agent_control_plane   = var.control_plane_grpc
  agent_credential_path = local.credential_path
}

# read after the registration wrote it (the dependency defers the read to apply time)
data "local_sensitive_file" "credential" {
  for_each   = var.regions
  filename   = module.region[each.key].credential_file
  depends_on = [module.region]
}

resource "google_service_account" "agent" {
  for_each     = var.regions
  account_id   = "meridian-${each.value.region}"
  display_name = "Meridian agent of ${each.key}"
}

resource "google_secret_manager_secret" "credential" {
  for_each  = var.regions
  secret_id = "meridian-${each.key}-agent-credential"
  labels    = var.labels

  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_version" "credential" {
  for_each    = var.regions
  secret      = google_secret_manager_secret.credential[each.key].id
  secret_data = trimspace(data.local_sensitive_file.credential[each.key].content)
}

resource "google_secret_manager_secret_iam_member" "agent" {
  for_each  = var.regions
  secret_id = google_secret_manager_secret.credential[each.key].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.agent[each.key].email}"
}

resource "google_compute_firewall" "workers" {
  count         = length(var.router_cidrs) > 0 ? 1 : 0
  name          = "meridian-workers"
  network       = var.network
  direction     = "INGRESS"
  source_ranges = var.router_cidrs
  target_tags   = [local.worker_tag]

  allow {
    protocol = "tcp"
    ports    = [for p in var.worker_ports : tostring(p)]
  }
}

resource "google_compute_instance" "agent" {
  for_each     = var.regions
  name         = "meridian-${each.key}"
  zone         = each.value.zone
  machine_type = each.value.machine_type
  tags         = [local.worker_tag]
  labels       = var.labels

  boot_disk {
    initialize_params {
      image = var.boot_image
      size  = 200
      type  = "pd-ssd"
    }
  }

  guest_accelerator {
    type  = each.value.accelerator
    count = each.value.gpu_count
  }

  # instances with GPUs cannot live-migrate
  scheduling {
    on_host_maintenance = "TERMINATE"
    automatic_restart   = true
  }

  network_interface {
    network = var.network
    access_config {}
  }

  service_account {
    email  = google_service_account.agent[each.key].email
    scopes = ["cloud-platform"]
  }

  metadata = {
    enable-oslogin = "TRUE"
    startup-script = templatefile("${path.module}/startup.sh.tftpl", {
      region           = each.key
      project          = var.project
      secret           = google_secret_manager_secret.credential[each.key].secret_id
      credential_path  = local.credential_path
      meridian_package = var.meridian_package
      # systemd splits ExecStart on spaces and honours double quotes
      agent_args = join(" ", [for a in module.region[each.key].agent_args : "\"${replace(a, "\"", "\\\"")}\""])
    })
  }

  depends_on = [
    google_secret_manager_secret_version.credential,
    google_secret_manager_secret_iam_member.agent,
  ]
}

# Destroyed first (it depends on the instance): refuses, before the instance goes,
# while the region still has deployments.
resource "terraform_data" "destroy_guard" {
  for_each = var.regions

  input = { check_command = module.region[each.key].destroy_check_command }

  provisioner "local-exec" {
    when    = destroy
    command = self.input.check_command
  }

  depends_on = [google_compute_instance.agent]
}
