output "regions" {
  description = "Per Meridian region: registration id, instance, addresses and the workers' REST endpoint."
  value = {
    for r in [module.us_east_1, module.eu_central_1, module.ap_northeast_1] : r.name => {
      id              = r.id
      endpoint        = r.endpoint
      instance_id     = r.instance_id
      public_ip       = r.public_ip
      private_ip      = r.private_ip
      credential_file = r.credential_file
    }
  }
}
