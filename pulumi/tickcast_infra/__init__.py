"""tickcast infrastructure on AWS as Pulumi ComponentResources (see pulumi/README.md)."""
