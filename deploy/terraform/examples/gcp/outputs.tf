output "regions" {
  description = "Per Meridian region: registration id, instance, addresses and the credential file."
  value = {
    for name, region in module.region : name => {
      id              = region.id
      endpoint        = region.endpoint
      instance        = google_compute_instance.agent[name].self_link
      public_ip       = google_compute_instance.agent[name].network_interface[0].access_config[0].nat_ip
      private_ip      = google_compute_instance.agent[name].network_interface[0].network_ip
      credential_file = region.credential_file
    }
  }
}
